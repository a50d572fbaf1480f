pub mod limiter;
pub mod log;
