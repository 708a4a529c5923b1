//! # agentwire-interop
//!
//! The interop matrix of agentwire against the reference implementation,
//! `zentinel-agent-protocol` 0.6.45 (issue #10). The crate has no code of its own: everything
//! is in the `matrix` integration test (`tests/matrix/`), one module per cell, and the
//! reference crate is a dev-dependency only. See `docs/COMPATIBILITY.md` for what each cell
//! checks and where agentwire bends to match what the reference puts on the wire.
