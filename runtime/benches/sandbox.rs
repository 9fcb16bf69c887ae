//! Sandbox benchmarks, beside raw wasmtime in the same run: a trivial exported
//! function called through the sandbox (limits, store, instantiate from
//! `InstancePre`, call, drop; then with the tool pool and its blocking-thread hop)
//! against raw wasmtime pooling instantiate + call + drop; Python "hello" cold (a
//! fresh interpreter per call) and warm (a pre-started interpreter); and
//! `fork`+`exec` of `/bin/true` for context. Needs the WASI interpreters
//! (`scripts/fetch-interpreters`).

#![allow(clippy::unwrap_used)] // a benchmark: any failure is a bug to see at once

#[path = "../../benches/report.rs"]
mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_runtime::sandbox::{
    PoolConfig, Program, RunRequest, RunStatus, Sandbox, SandboxConfig, SandboxTool, ToolCode,
};
use criterion::Criterion;
use report::{fmt_ns, fmt_ratio, median_ns, publish};
use serde_json::json;

const TRIVIAL: &str = r#"(module (func (export "answer") (result i32) i32.const 42))"#;

fn sandbox(warm: usize) -> Arc<Sandbox> {
    Sandbox::new(SandboxConfig {
        cache_dir: Some(std::path::PathBuf::from(report::target_dir()).join("tmp/wasm-cache")),
        max_instances: 16,
        warm_python: warm,
        ..SandboxConfig::default()
    })
    .unwrap()
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    let tokio = tokio::runtime::Runtime::new().unwrap();

    // Raw wasmtime: the same pooling allocator, no limits, no WASI.
    let mut pool = wasmtime::PoolingAllocationConfig::new();
    pool.total_core_instances(16)
        .total_memories(16)
        .total_tables(16);
    let mut cfg = wasmtime::Config::new();
    cfg.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    let engine = wasmtime::Engine::new(&cfg).unwrap();
    let module = wasmtime::Module::new(&engine, TRIVIAL).unwrap();
    let pre = wasmtime::Linker::<()>::new(&engine)
        .instantiate_pre(&module)
        .unwrap();

    let sb = sandbox(0);
    let trivial = RunRequest::new(Program::Wasm {
        module: Arc::new(TRIVIAL.as_bytes().to_vec()),
        invoke: Some("answer".into()),
    });
    assert_eq!(sb.run_blocking(&trivial).unwrap().results, vec![json!(42)]);
    let tool_pool = SandboxTool::new(
        sb.clone(),
        ToolCode::Fixed(Program::Wasm {
            module: Arc::new(TRIVIAL.as_bytes().to_vec()),
            invoke: Some("answer".into()),
        }),
    )
    .pool(PoolConfig {
        workers: 4,
        per_agent: 8,
    })
    .into_pool("answer");

    let hello = RunRequest::new(Program::Python("print('hello')".into()));
    let warm_sb = sandbox(1);
    tokio.block_on(async {
        // Compiles (or loads from the disk cache) CPython once, outside the timings.
        assert_eq!(sb.run(hello.clone()).await.unwrap().stdout, "hello\n");
        warm_sb.warm_up();
    });

    let mut g = c.benchmark_group("sandbox");
    g.bench_function("raw_wasmtime_instantiate_call_drop", |b| {
        b.iter(|| {
            let mut store = wasmtime::Store::new(&engine, ());
            let inst = pre.instantiate(&mut store).unwrap();
            let f = inst
                .get_typed_func::<(), i32>(&mut store, "answer")
                .unwrap();
            assert_eq!(f.call(&mut store, ()).unwrap(), 42);
        })
    });
    g.bench_function("sandbox_trivial_call", |b| {
        b.iter(|| {
            let r = sb.run_blocking(&trivial).unwrap();
            assert_eq!(r.status, RunStatus::Ok);
        })
    });
    g.bench_function("sandbox_trivial_call_through_tool_pool", |b| {
        b.iter(|| {
            let out = tokio.block_on(tool_pool.call("bench", json!({}))).unwrap();
            assert_eq!(out.value["status"], "ok");
        })
    });
    g.bench_function("fork_exec_bin_true", |b| {
        b.iter(|| {
            assert!(
                std::process::Command::new("/bin/true")
                    .status()
                    .unwrap()
                    .success()
            )
        })
    });
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("python_hello_cold", |b| {
        b.iter(|| {
            let r = sb.run_blocking(&hello).unwrap();
            assert_eq!(r.stdout, "hello\n");
        })
    });
    // Warm: the call finds a pre-started interpreter ready (the wait for the
    // replacement to start is not timed; it is the pool's throughput, not latency).
    g.bench_function("python_hello_warm", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let deadline = Instant::now() + Duration::from_secs(30);
                while warm_sb.warm_ready() == 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(2));
                }
                let t = Instant::now();
                let r = tokio.block_on(warm_sb.run(hello.clone())).unwrap();
                total += t.elapsed();
                assert!(r.warm, "a warm start");
                assert_eq!(r.stdout, "hello\n");
            }
            total
        })
    });
    g.finish();

    let m = |b: &str| median_ns("sandbox", b).unwrap_or(f64::NAN);
    let raw = m("raw_wasmtime_instantiate_call_drop");
    let call = m("sandbox_trivial_call");
    let pooled = m("sandbox_trivial_call_through_tool_pool");
    let cold = m("python_hello_cold");
    let warm = m("python_hello_warm");
    let fork = m("fork_exec_bin_true");
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    let mut table =
        String::from("| measure | median | vs raw wasmtime | note |\n|---|---|---|---|\n");
    table += &format!(
        "| raw wasmtime: pooling instantiate + call + drop | {} | 1.00× | the library underneath |\n",
        fmt_ns(raw)
    );
    table += &format!(
        "| sandbox: limits, store, instantiate, call, drop | {} | {} | epoch deadline, fuel, memory limiter |\n",
        fmt_ns(call),
        fmt_ratio(call / raw)
    );
    table += &format!(
        "| sandbox through the tool pool (+ scheduling, run in place on the async runtime) | {} | {} | goal ≤ 20 µs: {} |\n",
        fmt_ns(pooled),
        fmt_ratio(pooled / raw),
        verdict(pooled <= 20_000.0)
    );
    table += &format!(
        "| Python hello, cold (interpreter start-up included) | {} | | module compiled and cached |\n",
        fmt_ns(cold)
    );
    table += &format!(
        "| Python hello, warm (pre-started interpreter) | {} | | goal ≤ 20 ms: {} |\n",
        fmt_ns(warm),
        verdict(warm <= 20e6)
    );
    table += &format!(
        "| fork + exec /bin/true | {} | | for context |\n",
        fmt_ns(fork)
    );
    publish("bulwark-sandbox.md", &table);
}
