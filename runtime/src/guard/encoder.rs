//! Sentence encoders that run in the process, on the CPU, from all-MiniLM-L6-v2's
//! files: [`Encoder`] is the whole model (a six-layer BERT giving 384-dimensional
//! sentence vectors, its forward pass through candle, its tokenizer through
//! tokenizers); [`StaticEncoder`] keeps only the model's token embeddings and
//! averages them over windows of 128 tokens, in about a millisecond. A classifier
//! over either's vectors can follow an attacker who rephrases, where fixed patterns
//! cannot.
//!
//! The weights, tokenizer and configuration come from `scripts/fetch-guard-model`
//! (pinned, hash-checked) into `$BULWARK_GUARD_MODEL_DIR`, else
//! `~/.cache/bulwark/guard-model`. A text longer than one window (256 tokens) is
//! encoded window by window, each window overlapping the previous one by a quarter
//! (the static encoder's windows are [`STATIC_WINDOW_TOKENS`] long and overlap by
//! half), and every vector keeps the byte range of the text it stands for.

use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::Tokenizer;

/// Dimensions of a sentence vector.
pub const DIMENSIONS: usize = 384;

/// Most tokens of one window, the two special tokens included.
pub const WINDOW_TOKENS: usize = 256;

/// Tokens in one window of the [`StaticEncoder`].
pub const STATIC_WINDOW_TOKENS: usize = 128;

/// Largest weights file the encoder loads, bytes.
const MAX_WEIGHTS_BYTES: u64 = 256 << 20;

/// Why the encoder could not load or encode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncoderError {
    /// A file of the model is missing.
    #[error(
        "the guard model's {file} is missing in {dir}: run scripts/fetch-guard-model (or set BULWARK_GUARD_MODEL_DIR)"
    )]
    Missing {
        /// The directory looked in.
        dir: PathBuf,
        /// The file.
        file: &'static str,
    },
    /// A file is there but does not load.
    #[error("the guard model does not load: {0}")]
    Load(String),
    /// Encoding failed.
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// One window of a text and its unit-length sentence vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// The bytes of the text it covers.
    pub range: Range<usize>,
    /// The vector (length [`DIMENSIONS`], L2 norm 1).
    pub vector: Vec<f32>,
}

/// The encoder: tokenizer, weights, and the device (the CPU).
pub struct Encoder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    /// Where the model's files are looked for by default.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("BULWARK_GUARD_MODEL_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        Path::new(&home).join(".cache/bulwark/guard-model")
    }

    /// Loads `model.safetensors`, `tokenizer.json` and `config.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Encoder, EncoderError> {
        let files = ModelFiles::find(dir)?;
        let config: Config = serde_json::from_str(
            &std::fs::read_to_string(&files.config).map_err(|e| load_error("config.json", &e))?,
        )
        .map_err(|e| load_error("config.json", &e))?;
        let device = Device::Cpu;
        let vb = VarBuilder::from_buffered_safetensors(files.weights()?, DType::F32, &device)
            .map_err(|e| load_error("model.safetensors", &e))?;
        let model =
            BertModel::load(vb, &config).map_err(|e| load_error("model.safetensors", &e))?;
        Ok(Encoder {
            model,
            tokenizer: files.tokenizer()?,
            device,
        })
    }

    /// The vectors of `text`, one per window.
    pub fn windows(&self, text: &str) -> Result<Vec<Window>, EncoderError> {
        let enc = |e: &dyn std::fmt::Display| EncoderError::Encode(e.to_string());
        let encoding = self.tokenizer.encode(text, false).map_err(|e| enc(&e))?;
        let ids = encoding.get_ids();
        let offsets = encoding.get_offsets();
        let (cls, sep) = (self.special("[CLS]")?, self.special("[SEP]")?);
        let body = WINDOW_TOKENS - 2;
        let step = body - body / 4;
        let mut spans: Vec<Range<usize>> = Vec::new();
        let mut start = 0;
        loop {
            let end = (start + body).min(ids.len());
            spans.push(start..end);
            if end == ids.len() {
                break;
            }
            start += step;
        }
        let batch: Vec<Vec<u32>> = spans
            .iter()
            .map(|s| {
                let mut w = Vec::with_capacity(s.len() + 2);
                w.push(cls);
                w.extend_from_slice(&ids[s.clone()]);
                w.push(sep);
                w
            })
            .collect();
        let vectors = self.forward(&batch)?;
        Ok(spans
            .into_iter()
            .zip(vectors)
            .map(|(s, vector)| {
                let range = match (
                    offsets.get(s.start),
                    s.end.checked_sub(1).and_then(|e| offsets.get(e)),
                ) {
                    (Some(a), Some(b)) if !s.is_empty() => a.0..b.1,
                    _ => 0..0,
                };
                Window { range, vector }
            })
            .collect())
    }

    fn special(&self, token: &str) -> Result<u32, EncoderError> {
        self.tokenizer
            .token_to_id(token)
            .ok_or_else(|| EncoderError::Load(format!("the tokenizer has no {token}")))
    }

    /// Mean-pooled, unit-length vectors of token sequences, in one padded batch.
    fn forward(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EncoderError> {
        let enc = |e: candle_core::Error| EncoderError::Encode(e.to_string());
        let width = batch.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch.len() * width);
        let mut mask = Vec::with_capacity(batch.len() * width);
        for seq in batch {
            ids.extend(seq.iter().copied());
            ids.extend(std::iter::repeat_n(0u32, width - seq.len()));
            mask.extend(std::iter::repeat_n(1u32, seq.len()));
            mask.extend(std::iter::repeat_n(0u32, width - seq.len()));
        }
        let shape = (batch.len(), width);
        let ids = Tensor::from_vec(ids, shape, &self.device).map_err(enc)?;
        let mask = Tensor::from_vec(mask, shape, &self.device).map_err(enc)?;
        let types = ids.zeros_like().map_err(enc)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask)).map_err(enc)?;
        // Mean over the real tokens, then unit length.
        let m = mask
            .to_dtype(DType::F32)
            .map_err(enc)?
            .unsqueeze(2)
            .map_err(enc)?;
        let summed = hidden.broadcast_mul(&m).map_err(enc)?.sum(1).map_err(enc)?;
        let counts = m.sum(1).map_err(enc)?;
        let mean = summed.broadcast_div(&counts).map_err(enc)?;
        let norm = mean
            .sqr()
            .map_err(enc)?
            .sum_keepdim(1)
            .map_err(enc)?
            .sqrt()
            .map_err(enc)?;
        let unit = mean.broadcast_div(&norm).map_err(enc)?;
        unit.to_vec2::<f32>().map_err(enc)
    }
}

/// The paths of the model's files in a directory, each checked to exist.
struct ModelFiles {
    weights: PathBuf,
    tokenizer: PathBuf,
    config: PathBuf,
}

impl ModelFiles {
    fn find(dir: &Path) -> Result<ModelFiles, EncoderError> {
        let file = |name: &'static str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(EncoderError::Missing {
                    dir: dir.to_path_buf(),
                    file: name,
                })
            }
        };
        Ok(ModelFiles {
            weights: file("model.safetensors")?,
            tokenizer: file("tokenizer.json")?,
            config: file("config.json")?,
        })
    }

    /// The weights file's bytes, refused beyond [`MAX_WEIGHTS_BYTES`].
    fn weights(&self) -> Result<Vec<u8>, EncoderError> {
        let size = std::fs::metadata(&self.weights)
            .map_err(|e| load_error("model.safetensors", &e))?
            .len();
        if size > MAX_WEIGHTS_BYTES {
            return Err(load_error(
                "model.safetensors",
                &format!("{size} bytes, more than {MAX_WEIGHTS_BYTES}"),
            ));
        }
        std::fs::read(&self.weights).map_err(|e| load_error("model.safetensors", &e))
    }

    /// The tokenizer, without the file's own padding and truncation to 128 tokens:
    /// windows and padding are done here.
    fn tokenizer(&self) -> Result<Tokenizer, EncoderError> {
        let mut tokenizer =
            Tokenizer::from_file(&self.tokenizer).map_err(|e| load_error("tokenizer.json", &e))?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| load_error("tokenizer.json", &e))?;
        tokenizer.with_padding(None);
        Ok(tokenizer)
    }
}

fn load_error(what: &str, e: &dyn std::fmt::Display) -> EncoderError {
    EncoderError::Load(format!("{what}: {e}"))
}

/// The token embeddings of all-MiniLM-L6-v2 without the layers above them: a text's
/// vectors are the means of its tokens' embeddings over windows of
/// [`STATIC_WINDOW_TOKENS`] tokens, half overlapping. No matrix product, so a 2 KB
/// message costs about a millisecond on one core.
pub struct StaticEncoder {
    /// `vocabulary × DIMENSIONS`, row-major.
    table: Vec<f32>,
    tokenizer: Tokenizer,
}

impl std::fmt::Debug for StaticEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticEncoder")
            .field("vocabulary", &(self.table.len() / DIMENSIONS))
            .finish_non_exhaustive()
    }
}

/// The name of the token-embedding matrix in the weights file.
const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";

impl StaticEncoder {
    /// Loads the token embeddings and the tokenizer from `dir` (the files
    /// [`Encoder::load`] reads).
    pub fn load(dir: &Path) -> Result<StaticEncoder, EncoderError> {
        let files = ModelFiles::find(dir)?;
        let bytes = files.weights()?;
        let file = "model.safetensors";
        // Only the one matrix is converted; the layers above it are never read.
        let weights = candle_core::safetensors::SliceSafetensors::new(&bytes)
            .map_err(|e| load_error(file, &e))?;
        let name = weights
            .tensors()
            .into_iter()
            .map(|(n, _)| n)
            .find(|n| n.ends_with(WORD_EMBEDDINGS))
            .ok_or_else(|| load_error(file, &format!("no {WORD_EMBEDDINGS}")))?;
        let matrix = weights
            .load(&name, &Device::Cpu)
            .map_err(|e| load_error(file, &e))?;
        let tokenizer = files.tokenizer()?;
        let (rows, cols) = matrix.dims2().map_err(|e| load_error(file, &e))?;
        if cols != DIMENSIONS || rows < tokenizer.get_vocab_size(true) {
            return Err(load_error(
                file,
                &format!(
                    "token embeddings are {rows}×{cols}, expected {}×{DIMENSIONS}",
                    tokenizer.get_vocab_size(true)
                ),
            ));
        }
        let table = matrix
            .to_dtype(DType::F32)
            .and_then(|m| m.flatten_all())
            .and_then(|m| m.to_vec1::<f32>())
            .map_err(|e| load_error(file, &e))?;
        Ok(StaticEncoder { table, tokenizer })
    }

    /// The vectors of `text`, one per window; an empty text has none.
    pub fn windows(&self, text: &str) -> Result<Vec<Window>, EncoderError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| EncoderError::Encode(e.to_string()))?;
        let (ids, offsets) = (encoding.get_ids(), encoding.get_offsets());
        let step = STATIC_WINDOW_TOKENS / 2;
        let mut out = Vec::new();
        let mut start = 0;
        while start < ids.len() {
            let end = (start + STATIC_WINDOW_TOKENS).min(ids.len());
            let mut vector = vec![0f32; DIMENSIONS];
            for &id in &ids[start..end] {
                let at = id as usize * DIMENSIONS;
                let row = self.table.get(at..at + DIMENSIONS).ok_or_else(|| {
                    EncoderError::Encode(format!("token id {id} is outside the vocabulary"))
                })?;
                for (v, x) in vector.iter_mut().zip(row) {
                    *v += x;
                }
            }
            unit(&mut vector);
            let range = offsets[start].0..offsets[end - 1].1;
            out.push(Window { range, vector });
            if end == ids.len() {
                break;
            }
            start += step;
        }
        Ok(out)
    }
}

/// Scales `v` to unit length (a zero vector stays zero).
fn unit(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The cosine similarity of two unit-length vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
