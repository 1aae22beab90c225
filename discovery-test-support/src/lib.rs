//! What the tests of every crate share, so that none keeps a copy: a real server started
//! in the test's runtime on 127.0.0.1, a connection that speaks raw frames, one
//! `eventually`, a harness for the binaries, and a proxy that can cut connections.
//! A dev-dependency only; never published.
//!
//! | module | what it is for |
//! |---|---|
//! | [`server`] | [`TestServer`]: the server on its own task, on a port of its own (or a given one), with a compat listener if asked |
//! | [`wire`] | [`Wire`]: frames with no help from the client crate, and raw bytes |
//! | [`wait`] | [`eventually`] and [`PATIENCE`]: polling with a generous deadline, never a fixed sleep |
//! | [`process`] | [`Process`]: a binary started with flags and variables, its `listening on` lines read, signalled, waited for |
//! | [`proxy`] | [`Proxy`]: a TCP proxy that can cut or refuse connections without its server knowing |

pub mod process;
pub mod proxy;
pub mod server;
pub mod wait;
pub mod wire;

pub use process::Process;
pub use proxy::Proxy;
pub use server::{TestServer, dead_address};
pub use wait::{PATIENCE, eventually, eventually_within};
pub use wire::Wire;
