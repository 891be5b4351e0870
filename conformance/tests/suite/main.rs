//! The AEM conformance suite: system-call-level tests run in the guest
//! against the real AEM kernel.  Each test's name starts with the ID of the
//! MISSION.md requirement it proves.

mod api;
