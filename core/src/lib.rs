//! # agentwire-core
//!
//! The sans-IO heart of agentwire, a Rust implementation of the Zentinel agent protocol v2:
//! every message, the frame codec, the encodings (JSON always, MessagePack and postcard when
//! negotiated) and the state machines of both ends of a connection. It never touches a
//! socket, a clock or a thread: bytes and the current time go in, bytes to send, events and
//! the next deadline come out. The runtime crates (`agentwire-tokio`, `agentwire-async-std`,
//! `agentwire-smol`) drive it over real sockets.
//!
//! ## Features (additive, rustls-style ladder)
//!
//! | feature | adds |
//! |---|---|
//! | *(none)* | [`frame`] header codec and [`frame::FixedFrameReader`]: no allocator at all |
//! | `alloc` / `json` | messages, JSON, the growable frame decoder, proxy and agent sessions |
//! | `postcard` | the postcard encoding (agentwire peers only, negotiated by our own key) |
//! | `msgpack` | MessagePack (needs `std`, as `rmp-serde` does) |
//! | `std` | `std::error::Error` integration, the pool's atomic logic and metrics |
//! | `fuzzing` | the `fuzzing` module: the bodies of the cargo-fuzz targets, with their invariants |
//!
//! ## The drain rule
//!
//! After anything happens — bytes arrived, a timer fired, you called a `send_*` method —
//! drain every output until it is empty, then sleep until [`session::ProxySession::poll_timeout`]
//! or until the socket is readable:
//!
//! ```no_run
//! # #[cfg(feature = "std")] {
//! use agentwire_core::session::{ProxyConfig, ProxySession};
//! use agentwire_core::time::Instant;
//! # fn now() -> Instant { Instant::ZERO }
//! # fn write_all(_: &[u8]) {}
//! # fn read_some() -> Vec<u8> { Vec::new() }
//! let mut session = ProxySession::new(ProxyConfig::default(), now());
//! loop {
//!     while let Some(bytes) = session.poll_transmit() {
//!         write_all(&bytes);
//!     }
//!     while let Some(event) = session.poll_event() {
//!         println!("{event:?}");
//!     }
//!     if session.is_closed() {
//!         break;
//!     }
//!     // Wait for readable bytes or for `session.poll_timeout()`, whichever comes first.
//!     let input = read_some();
//!     if input.is_empty() {
//!         session.handle_eof(now());
//!     } else {
//!         session.handle_input(now(), &input);
//!     }
//!     session.handle_timeout(now());
//! }
//! # }
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

#[cfg(feature = "alloc")]
pub mod encoding;
pub mod frame;
#[cfg(all(feature = "fuzzing", not(loom)))]
pub mod fuzzing;
#[cfg(feature = "alloc")]
pub mod message;
#[cfg(feature = "std")]
pub mod metrics;
#[cfg(feature = "msgpack")]
mod msgpack_fast;
#[cfg(feature = "std")]
pub mod pool;
#[cfg(feature = "alloc")]
pub mod session;
#[cfg(feature = "std")]
pub mod sync;
pub mod time;
