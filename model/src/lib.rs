//! The passive types the domains and the store share: what an execution, a tenant, a
//! secret, a definition, a webhook delivery and a scope are, and the rate limit's
//! arithmetic. They depend on nothing else of the daemon, so the store depends on them and
//! not on the domains that use the store (each domain re-exports its own as `model`).

pub mod definition;
pub mod delivery;
pub mod execution;
pub mod rate;
pub mod scope;
pub mod secret;
pub mod tenant;
pub mod trigger;

/// The length of `value` as JSON text, without writing it out.
pub fn json_len(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}
