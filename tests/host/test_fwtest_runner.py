"""The firmware test runner itself: items per function, failures fail the run, skips, heap."""

from __future__ import annotations

import textwrap

pytest_plugins = ["pytester"]


def _project(pytester, body: str) -> None:
    pytester.makeini("[pytest]\nfirmware_testpaths = fw\n")
    fw = pytester.mkdir("fw")
    (fw / "test_demo.py").write_text(textwrap.dedent(body))


def test_each_function_is_an_item_and_a_failing_firmware_test_fails_the_run(pytester):
    _project(
        pytester,
        """
        import sys
        from mptest import needs

        def test_passes():
            assert sys.implementation.name == "micropython"

        def test_fails():
            x = 1
            assert x == 2, "one is not two"

        async def test_async_passes():
            import asyncio
            await asyncio.sleep_ms(1)

        @needs("no_such_module_here")
        def test_skipped():
            raise RuntimeError("must not run")
        """,
    )
    r = pytester.runpytest_subprocess("-v", "-rfs")
    r.assert_outcomes(passed=2, failed=1, skipped=1)
    assert r.ret == 1
    out = r.stdout.str()
    assert "FAILED fw/test_demo.py::test_fails" in out
    # the MicroPython traceback is the failure report
    assert "AssertionError: one is not two" in out
    assert "module no_such_module_here not available on this port" in out


def test_heap_limit_applies_and_a_test_can_ask_for_more(pytester):
    _project(
        pytester,
        """
        from mptest import heap

        def test_default_heap_is_too_small_for_200k():
            try:
                b = bytearray(200 * 1024)
            except MemoryError:
                return
            raise AssertionError("200 KiB fitted in the default 128 KiB heap")

        @heap("512k")
        def test_bigger_heap_on_request():
            b = bytearray(200 * 1024)
            assert len(b) == 200 * 1024
        """,
    )
    r = pytester.runpytest_subprocess()
    r.assert_outcomes(passed=2)


def test_assert_no_alloc_catches_an_allocation(pytester):
    _project(
        pytester,
        """
        from mptest import assert_no_alloc, raises

        def _allocates(n):
            return [0] * n

        def _quiet(a, b):
            return a + b

        def test_alloc_detected():
            e = raises(AssertionError, assert_no_alloc, _allocates, 10)
            assert "allocated" in str(e)

        def test_no_alloc_passes():
            assert assert_no_alloc(_quiet, 2, 3) == 5
        """,
    )
    r = pytester.runpytest_subprocess()
    r.assert_outcomes(passed=2)


def test_a_crash_before_reporting_is_a_failure_with_the_output(pytester):
    _project(
        pytester,
        """
        import sys

        def test_exits_early():
            print("bye")
            sys.exit(3)
        """,
    )
    r = pytester.runpytest_subprocess()
    r.assert_outcomes(failed=1)
    assert "exited with code 3 before reporting a result" in r.stdout.str()
