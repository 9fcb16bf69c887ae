//! Byte mutations of real tokens: parsing never panics, and nothing that still parses
//! has more rights than the original.

use bulwark_capabilities::{Attenuation, KeyPair, Revocations, Token};
use proptest::prelude::*;

use crate::{fixture, request};

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Truncate { len: usize },
    Insert { at: usize, byte: u8 },
    Delete { at: usize },
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    match *m {
        Mutation::Flip { at, bit } => bytes[at % n] ^= 1 << (bit % 8),
        Mutation::Set { at, byte } => bytes[at % n] = byte,
        Mutation::Truncate { len } => bytes.truncate(len % n),
        Mutation::Insert { at, byte } => bytes.insert(at % (n + 1), byte),
        Mutation::Delete { at } => {
            bytes.remove(at % n);
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Delete { at }),
    ]
}

/// Flips every bit of a depth-1 token. Biscuit's protobuf framing has a few bits that
/// are not covered by any signature (a field tag whose value is the default, so the
/// decoded token is unchanged); those may still parse, but only as the very same token.
#[test]
fn every_single_bit_flip_is_rejected_or_changes_nothing() {
    let f = fixture();
    let child_key = KeyPair::generate();
    let token = f
        .token
        .attenuate(
            &f.holder,
            Attenuation::new("c", child_key.public()).only_tools(["read_inbox"]),
        )
        .unwrap();
    let bytes = token.to_bytes().unwrap();
    let mut still_parse = 0;
    for at in 0..bytes.len() {
        for bit in 0..8 {
            let mut m = bytes.clone();
            m[at] ^= 1 << bit;
            if let Ok(t) = Token::from_bytes(&m, &f.root.public()) {
                still_parse += 1;
                assert_eq!(
                    t.revocation_ids(),
                    token.revocation_ids(),
                    "flip {at}:{bit}"
                );
                assert_eq!(t.chain(), token.chain(), "flip {at}:{bit}");
                assert_eq!(t.effective(), token.effective(), "flip {at}:{bit}");
            }
        }
    }
    // Three unsigned key-type tags (root, block 1, next key), three bits each at most.
    assert!(
        still_parse <= 12,
        "{still_parse} of {} flips parsed",
        bytes.len() * 8
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn mutated_tokens_never_panic_and_never_gain_rights(
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let f = fixture();
        let mut bytes = f.token.to_bytes().unwrap();
        for m in &mutations {
            if bytes.is_empty() {
                break;
            }
            apply(&mut bytes, m);
        }
        if let Ok(t) = Token::from_bytes(&bytes, &f.root.public()) {
            // Whatever survived must be no wider than the original.
            prop_assert!(t.effective().budget <= f.token.effective().budget);
            for (tool, tier) in &t.effective().tools {
                prop_assert!(f.token.effective().tools.get(tool).is_some_and(|orig| tier >= orig));
            }
            let none = Revocations::new();
            for tool in ["read_inbox", "send_email", "pay", "delete_db", "wire_money"] {
                let r = request(t.agent(), tool, &[]);
                if t.authorize(&r, &none).is_ok() {
                    prop_assert!(f.token.authorize(&request("planner", tool, &[]), &none).is_ok());
                }
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let f = fixture();
        let _ = Token::from_base64(&text, &f.root.public());
        let _ = Token::from_bytes(text.as_bytes(), &f.root.public());
    }
}
