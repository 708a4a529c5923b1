//! The behaviour suite on tokio (multi-threaded, two workers).

use agentwire_tokio::TokioRuntime;
use std::future::Future;

fn block_on<F: Future<Output = ()>>(name: &str, scenario: impl FnOnce(TokioRuntime) -> F) {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let runtime = TokioRuntime::from_handle(tokio.handle().clone());
    tokio.block_on(agentwire_tests::with_deadline(
        runtime.clone(),
        name,
        scenario(runtime),
    ));
}

agentwire_tests::uds_suite!(block_on);
