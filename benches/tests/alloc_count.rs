//! The counting allocator counts what it should and hands out usable memory.

use agentwire_benches::alloc_count::CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

#[test]
fn counts_allocations_reallocations_and_bytes() {
    let before = ALLOC.allocations();
    let bytes_before = ALLOC.bytes();
    let mut v: Vec<u64> = Vec::with_capacity(4);
    v.extend([1, 2, 3, 4]);
    let after_alloc = ALLOC.allocations();
    v.reserve_exact(60); // grows: one realloc
    v.extend(5..=64);
    let zeroed = vec![0u8; 4096]; // alloc_zeroed
    let after = ALLOC.allocations();
    // Other test threads may allocate concurrently, so bound from below.
    assert!(after_alloc > before, "alloc not counted");
    assert!(after >= before + 3, "realloc/alloc_zeroed not counted");
    assert!(ALLOC.bytes() >= bytes_before + 32 + 512 + 4096);
    assert_eq!(v.iter().sum::<u64>(), 64 * 65 / 2);
    assert!(zeroed.iter().all(|&b| b == 0));
    drop(v);
    drop(zeroed);
}
