//! agentwire vs the reference crate `zentinel-agent-protocol`, side by side (issue #8).
//!
//! `taskset -c 0 cargo bench -p agentwire-benches` runs every group; pass a filter
//! (`-- codec`, `-- uds/sequential`) to run some. Measurement times are short so the whole
//! run takes a few minutes; see `benches/README.md` for the latest numbers.

use criterion::{Criterion, criterion_group, criterion_main};
use std::time::Duration;

mod body;
mod codec;
mod pool;
mod uds;

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = codec::bench, body::bench, pool::bench, uds::bench
}
criterion_main!(benches);
