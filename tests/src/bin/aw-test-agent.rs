//! The suite's `TestAgent` on a Unix socket, as a process of its own, for the fault tests
//! that kill an agent with SIGKILL and restart it (`tests/agent_process.rs`, `tests/soak.rs`).
//!
//! Usage: `aw-test-agent SOCKET`. Prints `aw-test-agent ready` on stdout once it serves, and
//! exits when its stdin reaches EOF (the test process went away).

use agentwire_tests::{READY_LINE, TestAgent, server_config};
use agentwire_tokio::{Shutdown, UdsServer};
use std::io::{Read, Write};
use std::sync::Arc;

fn main() {
    let Some(socket) = std::env::args_os().nth(1) else {
        eprintln!("usage: aw-test-agent SOCKET");
        std::process::exit(2);
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let runtime = agentwire_tokio::TokioRuntime::from_handle(tokio.handle().clone());
    let mut config = server_config(&[
        agentwire_tokio::core::message::Encoding::Postcard,
        agentwire_tokio::core::message::Encoding::Msgpack,
        agentwire_tokio::core::message::Encoding::Json,
    ]);
    config.serve.max_concurrent_per_connection = 2048;
    let server =
        UdsServer::bind(runtime.clone(), std::path::Path::new(&socket), config).expect("bind");
    let agent = Arc::new(TestAgent::new(runtime));
    // The parent holds our stdin; EOF means it is gone, and so should we be.
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    tokio.block_on(async move {
        let serve = tokio::spawn(server.serve(agent, Shutdown::new()));
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{READY_LINE}");
        let _ = out.flush();
        let _ = serve.await;
    });
}
