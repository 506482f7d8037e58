"""Deliberate one-line breakages of the promises Berth's tests are named after.
Each names the exact text it replaces (which must occur once in its file) and the
tests that must fail when it is applied: `unit` is a GoogleTest filter, `integration`
a list of pytest node ids under tests/integration/. run.py applies them one at a time
to a copy of the tree."""

MUTATIONS = [
    {
        "name": "publish without verifying the digest",
        "file": "proxy/store/blob_store.cpp",
        "find": "if (got != digest_ || (p.sized && p.written != p.size)) {",
        "replace": "if (false) {",
        "unit": "store_test.WrongBytesAreNeverPublished",
    },
    {
        "name": "serve a cache hit without asking about a new repository",
        "file": "proxy/mirror/mirror.cpp",
        "find": "if (!co_await authorized(reg, req, hit->entry().sources, r)) co_return r;",
        "replace": "(void)0;",
        "integration": ["test_blob_cache.py::test_a_hit_is_served_only_where_the_upstream_would_serve_it"],
    },
    {
        "name": "let another repository join a fill unasked",
        "file": "proxy/mirror/mirror.cpp",
        "find": "if (!co_await authorized(reg, req, fill_source, r)) co_return r;",
        "replace": "(void)fill_source;",
        "integration": ["test_faults.py::test_a_client_of_a_denied_repository_joining_a_fill_gets_no_byte"],
    },
    {
        "name": "tag TTL read in seconds instead of milliseconds",
        "file": "proxy/meta/cache.cpp",
        "find": "return age < (e.found ? ttl : options.negative_ttl).count();",
        "replace": "return age < (e.found ? ttl : options.negative_ttl).count() * 1000;",
        "unit": "MetaCache.ATtlRunsOutWhenItSaysAndNotBefore",
    },
    {
        "name": "serve stale answers past max_stale",
        "file": "proxy/meta/cache.cpp",
        "find": "if (best && best->found && asked - best->validated_ms < options.max_stale.count()) {",
        "replace": "if (best && best->found) {",
        "unit": "MetaCache.StaleAnswersEndAtMaxStale:MetaCache.MaxStaleBoundsStaleAnswers",
    },
    {
        "name": "evict a blob that is being read",
        "file": "proxy/store/blob_store.cpp",
        "find": "if (open_readers_.contains(c.digest) || fills_.contains(c.digest)) continue;",
        "replace": "if (fills_.contains(c.digest)) continue;",
        "unit": "store_test.EvictionIsLeastRecentlyUsedAndSparesOpenBlobs",
    },
    {
        "name": "one token for every scope",
        "file": "proxy/upstream/client.cpp",
        "find": "const auto key = token_key(reg.options.id(), realm, service, scope);",
        "replace": "const auto key = token_key(reg.options.id(), realm, service, \"\");",
        "integration": ["test_pull_path.py::test_tokens_are_cached_and_fetched_once_under_load",
                        "test_pull_path.py::test_token_issuer_saw_only_the_robot"],
    },
    {
        "name": "no repository allowlist",
        "file": "proxy/mirror/registry_table.cpp",
        "find": "if (patterns.empty()) return true;",
        "replace": "return true;",
        "unit": "RegistryTable.TheAllowlistAdmitsOnlyItsPatterns",
    },
    {
        "name": "an unknown ns goes to the default registry",
        "file": "proxy/mirror/registry_table.cpp",
        "find": "  return nullptr;\n}",
        "replace": "  return default_;\n}",
        "unit": "RegistryTable.RoutesByNsAndNothingElse",
    },
    {
        "name": "a range starting at the blob's size is satisfiable",
        "file": "proxy/core/range.cpp",
        "find": "if (first >= size) return std::nullopt;",
        "replace": "if (first > size) return std::nullopt;",
        "unit": "ByteRange.*",
        "integration": ["test_blob_cache.py::test_range_on_cached_and_in_flight_blobs"],
    },
    {
        "name": "a range may end before it starts",
        "file": "proxy/core/range.cpp",
        "find": "|| last < r.first) return std::nullopt;",
        "replace": ") return std::nullopt;",
        "unit": "ByteRange.*",
    },
    {
        "name": "the watchdog never fires",
        "file": "proxy/http/watchdog.cpp",
        "find": "if (late > limit_.count()) {",
        "replace": "if (false) {",
        "unit": "Watchdog.AStuckLoopIsReportedAndHealthzGoesDownFirst",
        "integration": ["test_faults.py::test_watchdog_exits_a_wedged_berth_and_the_next_run_reports_it"],
    },
    {
        "name": "a damaged cache file is served without proof",
        "file": "proxy/store/blob_store.cpp",
        "find": "if (blob->unproven()) return std::make_unique<proving_body>(std::move(blob), offset, end);",
        "replace": "(void)0;",
        "unit": "store_test.AChangedFileIsHashedWhileServedAndDroppedWhenWrong",
    },
    {
        "name": "a blob without Content-Length is relayed unverified",
        "file": "proxy/core/verifying_body.cpp",
        "find": "if (!verified(ec)) co_return 0;\n      holding_ = false;",
        "replace": "holding_ = false;",
        "unit": "VerifyingBody.UnsizedWrongBytesNeverArriveWhole",
    },
    {
        "name": "a lock nobody works under blocks until it expires",
        "file": "proxy/meta/cache.cpp",
        "find": "std::min(options.lock_timeout, options.lock_wait)",
        "replace": "options.lock_timeout",
        "unit": "MetaCacheShared.AnAbandonedLockCostsAtMostLockWait",
        "integration": ["test_metadata.py::test_a_paused_redis_never_stalls_pulls_past_the_bounds"],
    },
    {
        "name": "an issued token is written to the log",
        "file": "proxy/upstream/client.cpp",
        "find": "reg.metrics.token_fetch(reg.options.id(), \"ok\");",
        "replace": "log::debug(\"token\", {{\"value\", result.token}}); reg.metrics.token_fetch(reg.options.id(), \"ok\");",
        "integration": ["test_secrets.py::test_no_secret_in_any_output"],
    },
]
