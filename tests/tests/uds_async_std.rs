//! The behaviour suite on async-std (its global executor).

use agentwire_async_std::AsyncStdRuntime;
use std::future::Future;

fn block_on<F: Future<Output = ()>>(name: &str, scenario: impl FnOnce(AsyncStdRuntime) -> F) {
    let runtime = agentwire_async_std::runtime();
    async_std::task::block_on(agentwire_tests::with_deadline(
        runtime,
        name,
        scenario(runtime),
    ));
}

agentwire_tests::uds_suite!(block_on);
