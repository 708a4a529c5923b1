//! The behaviour suite on smol (its global executor).

use agentwire_smol::SmolRuntime;
use std::future::Future;

fn block_on<F: Future<Output = ()>>(name: &str, scenario: impl FnOnce(SmolRuntime) -> F) {
    let runtime = agentwire_smol::runtime();
    smol::block_on(agentwire_tests::with_deadline(
        runtime.clone(),
        name,
        scenario(runtime),
    ));
}

agentwire_tests::uds_suite!(block_on);
