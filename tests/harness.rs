//! The test suite's own rule: with GATEWAY_TEST_REQUIRE_ALL set (as `.ci/run` sets it), a test
//! whose backend is missing fails instead of passing without having run.

mod common;

#[test]
fn a_skip_fails_when_every_test_is_required() {
    for required in ["1", "yes"] {
        let failure = common::may_skip(Some(required), "a test", "no backend").unwrap_err();
        assert!(
            failure.contains("a test cannot run: no backend"),
            "{failure}"
        );
    }
    for relaxed in [None, Some(""), Some("0")] {
        assert!(common::may_skip(relaxed, "a test", "no backend").is_ok());
    }
}
