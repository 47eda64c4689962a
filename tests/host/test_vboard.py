"""The virtual board against STOCK mpremote (subprocess and library): it must behave as a board
on a USB serial port for exec, fs cp (with hash skip), fs ls, soft-reset, mip install from a
local directory, mount, run, interrupting running code, socket://, and power cuts."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mpremote.transport_serial import SerialTransport

from umeter import unixport
from umeter.errors import ConfigError
from umeter_hil.vboard import VirtualBoard, start_many

MPREMOTE = str(Path(sys.executable).parent / "mpremote")


def mp(vb_or_url, *args: str, timeout: float = 20) -> str:
    url = vb_or_url if isinstance(vb_or_url, str) else vb_or_url.port
    r = subprocess.run([MPREMOTE, "connect", url, *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"mpremote {args} failed: {r.stdout}\n{r.stderr}"
    return r.stdout


def wait_for(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture
def vb(tmp_path):
    with VirtualBoard(tmp_path / "vb", "sim") as b:
        b.wait_booted()
        yield b


def test_exec_reports_the_board_identity_and_a_board_like_sys_path(vb):
    out = mp(vb, "exec", "import machine, sys; print(machine.unique_id().hex(), sys.path)")
    assert out.split()[0] == vb.uid.hex()
    assert "['', '.frozen', '/lib']" in out


def test_flash_is_the_board_directory_not_the_host(vb):
    out = mp(vb, "exec", "import os; open('/x.txt', 'w').write('hi'); print(sorted(os.listdir('/')))")
    assert out.strip() == "['x.txt']"
    assert (vb.flash / "x.txt").read_text() == "hi"


def test_fs_cp_writes_the_file_and_skips_it_by_hash_the_second_time(vb, tmp_path):
    src = tmp_path / "data.bin"
    src.write_bytes(bytes(range(256)) * 40)
    first = mp(vb, "fs", "cp", str(src), ":data.bin")
    assert "Up to date" not in first
    assert (vb.flash / "data.bin").read_bytes() == src.read_bytes()
    second = mp(vb, "fs", "cp", str(src), ":data.bin")
    assert "Up to date: data.bin" in second
    assert hashlib.sha256(src.read_bytes()).hexdigest() in mp(vb, "fs", "sha256sum", ":data.bin")


def test_fs_ls_lists_the_files(vb):
    (vb.flash / "a.py").write_text("A = 1\n")
    (vb.flash / "lib").mkdir()
    out = mp(vb, "fs", "ls", ":")
    assert "a.py" in out and "lib/" in out


def test_soft_reset_prints_soft_reboot_and_clears_state(vb):
    mp(vb, "exec", "import sys; sys.modules['mark'] = 1")
    before = vb.resets
    mp(vb, "resume", "soft-reset")
    assert vb.resets == before + 1
    assert mp(vb, "resume", "exec", "import sys; print('mark' in sys.modules)").strip() == "False"


def test_library_soft_reset_matches_the_board_sequence_and_keeps_raw_mode(vb):
    t = SerialTransport(vb.port, baudrate=115200)
    try:
        t.enter_raw_repl(soft_reset=True)  # raises unless `soft reboot` and the raw banner arrive
        assert t.eval("1 + 2") == 3
        # Ctrl-D on an empty raw line: the board soft-resets and stays in the raw REPL.
        t.serial.write(b"\x04")
        data = t.read_until(1, b"raw REPL; CTRL-B to exit\r\n", timeout=5)
        assert b"MPY: soft reboot\r\n" in data
        assert t.eval("'%d' % (6 * 7)") == "42"
        t.exit_raw_repl()
    finally:
        t.close()


def test_boot_py_runs_at_every_reset_and_main_py_only_in_friendly_mode(vb):
    (vb.flash / "boot.py").write_text("open('/log.txt', 'a').write('b')\n")
    (vb.flash / "main.py").write_text("open('/log.txt', 'a').write('m')\n")
    # mpremote soft-resets into the raw REPL: boot.py runs, main.py does not (as on esp32)
    mp(vb, "exec", "pass")
    assert (vb.flash / "log.txt").read_text() == "b"
    vb.power_cut()
    vb.power_on()
    vb.wait_booted()
    wait_for(lambda: (vb.flash / "log.txt").read_text() == "bbm")


def test_ctrl_c_interrupts_a_running_main_py(vb):
    (vb.flash / "main.py").write_text("import time\nwhile True:\n    time.sleep_ms(5)\n")
    vb.power_cut()
    vb.power_on()
    vb.wait_booted()
    # resume: no soft reset, so only Ctrl-C (turned into SIGINT) can get the REPL back
    assert mp(vb, "resume", "exec", "print(6 * 7)").strip() == "42"


def test_exec_no_follow_loop_is_interrupted_by_the_next_command(vb):
    mp(vb, "exec", "--no-follow", "while True: pass")
    t0 = time.monotonic()
    assert mp(vb, "resume", "exec", "print('back')").strip() == "back"
    assert time.monotonic() - t0 < 10


def test_mip_install_from_a_local_package_json(vb, tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "mylib").mkdir(parents=True)
    (pkg / "mylib" / "__init__.py").write_text("VALUE = 1234\n")
    (pkg / "package.json").write_text(
        json.dumps({"urls": [["mylib/__init__.py", "mylib/__init__.py"]], "version": "0.1"})
    )
    mp(vb, "mip", "install", str(pkg / "package.json"))
    assert (vb.flash / "lib" / "mylib" / "__init__.py").read_text() == "VALUE = 1234\n"
    assert mp(vb, "exec", "import mylib; print(mylib.VALUE)").strip() == "1234"


def test_mip_install_from_a_local_index_directory(vb, tmp_path):
    index = tmp_path / "index"
    src = b"GREETING = 'hi'\n"
    h = hashlib.sha256(src).hexdigest()[:8]
    (index / "file" / h[:2]).mkdir(parents=True)
    (index / "file" / h[:2] / h).write_bytes(src)
    mpy = int(mp(vb, "exec", "import sys; print(sys.implementation._mpy & 0xFF)"))
    pdir = index / "package" / str(mpy) / "greet"
    pdir.mkdir(parents=True)
    (pdir / "latest.json").write_text(json.dumps({"hashes": [["greet.py", h]], "version": "1.0"}))
    mp(vb, "mip", "install", "--index", str(index), "greet")
    assert (vb.flash / "lib" / "greet.py").read_bytes() == src


def test_mount_serves_binary_host_files_to_the_board(vb, tmp_path):
    d = tmp_path / "share"
    d.mkdir()
    blob = bytes(range(256)) * 4
    (d / "blob.bin").write_bytes(blob)
    (d / "hostmod.py").write_text("X = 'from host'\n")
    out = mp(
        vb,
        "mount",
        str(d),
        "exec",
        "import hostmod, hashlib, binascii; print(hostmod.X); "
        "print(binascii.hexlify(hashlib.sha256(open('blob.bin','rb').read()).digest()).decode())",
    )
    assert "from host" in out
    assert hashlib.sha256(blob).hexdigest() in out


def test_run_executes_a_local_script(vb, tmp_path):
    s = tmp_path / "script.py"
    s.write_text("import machine\nprint('ran on', machine.unique_id().hex())\n")
    assert mp(vb, "run", str(s)).strip() == f"ran on {vb.uid.hex()}"


def test_socket_url_reaches_the_same_board(tmp_path):
    # stock mpremote cannot send a token: an --insecure listener for it
    with VirtualBoard(tmp_path / "vbt", "sim", tcp=True, insecure=True) as vb:
        vb.wait_booted()
        assert vb.url == f"socket://127.0.0.1:{vb.tcp_port}"
        mp(vb.url, "exec", "open('via_tcp.txt', 'w').write('ok')")
        assert (vb.flash / "via_tcp.txt").read_text() == "ok"


def _raw_tcp(vb, first: bytes, wait: float = 1.0) -> tuple[bytes, bool]:
    # Connects, sends `first` and a Ctrl-B (a prompt would follow), -> (what came back, closed?)
    import socket

    s = socket.create_connection(("127.0.0.1", vb.tcp_port), timeout=wait)
    try:
        s.sendall(first + b"\r\x02")
        got = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                break
            if not chunk:
                return got, True
            got += chunk
        return got, False
    finally:
        s.close()


def test_the_tcp_listener_is_loopback_only_and_wants_the_token_before_anything(tmp_path):
    # Issue 10 row 9: any local user got the raw REPL (and config.json's secrets) over TCP.
    from umeter.transport import Board

    with VirtualBoard(tmp_path / "vbs", "sim", tcp=True) as vb:
        vb.wait_booted()
        assert vb._lsock.getsockname()[0] == "127.0.0.1"
        assert len(vb.token) == 32 and vb.url.endswith("?token=" + vb.token)
        got, closed = _raw_tcp(vb, b"not-the-token\n")
        assert closed and b">>>" not in got and got == b"", got
        got, closed = _raw_tcp(vb, b"", wait=0.5)  # says nothing: nothing comes back
        assert got == b""
        assert vb.auth_refused >= 1
        with Board(vb.url) as b:  # the umeter transport sends the token from the URL
            assert b.eval("1 + 1") == 2
            got, closed = _raw_tcp(vb, b"wrong\n")  # an intruder does not displace the session
            assert closed
            assert b.eval("2 + 2") == 4


def test_the_boards_files_are_private_to_its_owner(tmp_path):
    import stat

    d = tmp_path / "vbp"
    (d / "flash").mkdir(parents=True)
    (d / "flash" / "config.json").write_text('{"cmd_key": "00"}')
    (d / "flash" / "config.json").chmod(0o644)
    with VirtualBoard(d, "sim") as vb:
        vb.wait_booted()
        mp(vb, "exec", "open('secret.json', 'w').write('{}')")
        for p in (vb.flash / "config.json", vb.flash / "secret.json"):
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        assert stat.S_IMODE(vb.flash.stat().st_mode) == 0o700


def test_heap_comes_from_the_board_definition(vb):
    # a bytearray as large as sim.json's heap cannot succeed
    kib = unixport.parse_heap(json.loads((unixport.boards_dir() / "sim.json").read_text())["heap"]) // 1024
    out = mp(
        vb, "exec", f"try:\n  b = bytearray({kib} * 1024)\n  print('big')\nexcept MemoryError:\n  print('MemoryError')"
    )
    assert out.strip() == "MemoryError"


def test_machine_reset_restarts_the_board_and_runs_main_py(vb):
    (vb.flash / "main.py").write_text("open('/count.txt', 'a').write('x')\n")
    out = mp(vb, "exec", "import machine; print(machine.reset_cause() == machine.SOFT_RESET)")
    assert out.strip() == "True"
    before = vb.resets
    subprocess.run([MPREMOTE, "connect", vb.port, "exec", "--no-follow", "import machine; machine.reset()"], timeout=20)
    wait_for(lambda: (vb.flash / "count.txt").exists() and (vb.flash / "count.txt").read_text() == "x")
    assert vb.resets > before


def test_power_cut_mid_write_leaves_the_board_silent_until_power_on(vb, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(b"A" * 20000)
    vb.cut_power_after(3000)
    # like a UART bridge whose board lost power, the port stays but nothing answers: mpremote hangs
    p = subprocess.Popen([MPREMOTE, "connect", vb.port, "fs", "cp", str(src), ":big.bin"], stdout=subprocess.DEVNULL)
    wait_for(lambda: not vb.powered)
    p.kill()
    p.wait()
    assert (vb.flash / "big.bin").stat().st_size < 20000  # plain mpremote cp leaves a truncated file
    vb.power_on()
    vb.wait_booted()
    assert mp(vb, "exec", "print('alive')").strip() == "alive"


def test_dropped_bytes_to_the_board_break_the_exchange_but_the_board_recovers(vb):
    vb.faults.drop_to_board = 3  # the first `\r\x03\r` vanish
    t = SerialTransport(vb.port, baudrate=115200)
    try:
        t.enter_raw_repl(soft_reset=False)
        assert t.eval("2 + 2") == 4
    finally:
        t.close()


def test_esp32_partition_rolls_back_an_unconfirmed_ota_slot(vb):
    code = (
        "import esp32\n"
        "p = esp32.Partition(esp32.Partition.RUNNING).get_next_update()\n"
        "p.writeblocks(0, b'IMG' + bytes(4093))\n"
        "p.set_boot()\n"
        "print(p.info()[4])\n"
    )
    assert mp(vb, "exec", code).strip() == "ota_1"
    vb.power_cut()
    vb.power_on()  # trial boot of the new slot
    vb.wait_booted()
    assert vb.ota_state()["running"] == 1 and vb.ota_state()["state"][1] == "pending"
    vb.power_cut()
    vb.power_on()  # not confirmed with mark_app_valid_cancel_rollback(): rolled back
    vb.wait_booted()
    assert vb.ota_state()["running"] == 0 and vb.ota_state()["state"][1] == "aborted"


def test_network_wlan_stand_in_connects_and_reports_the_mac(vb):
    out = mp(
        vb,
        "exec",
        "import network, machine\nw = network.WLAN(network.STA_IF)\nw.active(True)\nw.connect('x', 'y')\n"
        "print(w.isconnected(), w.config('mac') == machine.unique_id())",
    )
    assert out.split() == ["True", "True"]


def test_start_many_gives_each_board_its_own_pty_flash_and_id(tmp_path):
    vbs = start_many(tmp_path, "sim", 3)
    try:
        assert len({v.port for v in vbs}) == 3
        assert len({v.uid for v in vbs}) == 3
        assert len({v.flash for v in vbs}) == 3
    finally:
        for v in vbs:
            v.stop()


def test_unknown_board_and_bad_count_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown board 'nope'"):
        VirtualBoard(tmp_path / "x", "nope")
    with pytest.raises(ConfigError, match="--count"):
        start_many(tmp_path, "sim", 0)


def test_absolute_rename_works_as_on_littlefs(vb):
    out = mp(
        vb, "exec", "import os\nopen('/a.tmp', 'w').write('new')\nos.rename('/a.tmp', '/a')\nprint(open('/a').read())"
    )
    assert out.strip() == "new"
    assert sorted(p.name for p in vb.flash.iterdir()) == ["a"]


def test_cli_vboard_start_prints_the_pty_paths_first_and_stops_on_sigint(tmp_path):
    import signal

    umeter = str(Path(sys.executable).parent / "umeter")
    p = subprocess.Popen(
        [umeter, "vboard", "start", "--count", "2", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ports = [p.stdout.readline().strip(), p.stdout.readline().strip()]
        assert all(x.startswith("/dev/pts/") for x in ports) and ports[0] != ports[1]
        assert mp(ports[1], "exec", "print('hi')").strip() == "hi"
    finally:
        p.send_signal(signal.SIGINT)
        assert p.wait(10) == 0


def test_cli_hil_run_reports_the_suite_on_a_virtual_board():
    import json as _json

    umeter = str(Path(sys.executable).parent / "umeter")
    r = subprocess.run(
        [umeter, "hil", "run", "-k", "unique_id or real_front_end", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rep = _json.loads(r.stdout[r.stdout.index("{") :])
    assert rep["summary"] == {"passed": 1, "failed": 0, "error": 0, "skipped": 1}
    assert any(t["state"] == "skipped" and "analog" in t["reason"] for t in rep["tests"])


def test_ctrl_c_interrupts_a_loop_typed_at_the_friendly_repl(vb):
    import serial

    with serial.Serial(vb.port, timeout=0.2) as s:

        def until(marker: bytes, wait: float = 5.0) -> bytes:
            got = b""
            deadline = time.monotonic() + wait
            while marker not in got and time.monotonic() < deadline:
                got += s.read(256)
            return got

        s.write(b"\r\x03\r\x02")
        until(b">>> ")
        s.write(b"while True:\r")
        until(b"... ")
        s.write(b"pass\r")
        for _ in range(4):  # auto-indent: blank lines dedent, a blank line at `... ` runs the block
            s.write(b"\r")
            time.sleep(0.3)
            if vb._busy:
                break
        assert vb._busy
        s.write(b"\x03")
        assert b"KeyboardInterrupt" in until(b"KeyboardInterrupt")
        s.write(b"print(6 * 7)\r")
        assert b"42" in until(b"42")


def test_mpremote_reset_and_rtc_work_through_the_stand_ins(vb):
    subprocess.run([MPREMOTE, "connect", vb.port, "reset"], capture_output=True, timeout=20)
    wait_for(lambda: "hard" in vb.faults.log)  # machine.reset() reached the relay
    mp(vb, "rtc", "--set")  # may arrive while the board boots: its Ctrl-C must not break the boot
    out = mp(vb, "rtc")
    assert out.strip().startswith("(") and str(time.localtime().tm_year) in out


def test_a_sigint_that_races_the_prompt_does_not_look_like_a_reset(vb):
    import signal

    mp(vb, "exec", "pass")  # the board now idles in the raw REPL
    before = len(vb.console())
    os_kill = __import__("os").kill
    os_kill(vb._proc.pid, signal.SIGINT)  # what a late Ctrl-C does to the unix port at a prompt
    wait_for(lambda: "sigint at prompt" in vb.faults.log)
    vb.wait_booted()
    assert "soft reboot" not in vb.console()[before:]
    assert mp(vb, "exec", "print('still here')").strip() == "still here"


def test_ctrl_c_works_again_after_a_mount_session(vb, tmp_path):
    (tmp_path / "m.py").write_text("X = 1\n")
    mp(vb, "mount", str(tmp_path), "exec", "import m; print(m.X)")
    mp(vb, "resume", "exec", "--no-follow", "while True: pass")
    assert mp(vb, "resume", "exec", "print('back')").strip() == "back"


def test_machine_reset_and_sys_exit_from_main_py_restart_the_board_as_on_esp32(vb):
    (vb.flash / "main.py").write_text(
        "import machine, sys\n"
        "n = len(open('/n.txt').read()) if 'n.txt' in __import__('os').listdir('/') else 0\n"
        "open('/n.txt', 'a').write('x')\n"
        "if n == 0:\n    machine.reset()\n"
        "if n == 1:\n    sys.exit()\n"
        "print('main done', machine.reset_cause() == machine.SOFT_RESET)\n"
    )
    vb.power_cut()
    vb.power_on()
    wait_for(lambda: "main done" in vb.console(), 10)
    assert (vb.flash / "n.txt").read_text() == "xxx"
    assert "hard" in vb.faults.log  # machine.reset() restarted it
    assert "MPY: soft reboot" in vb.console()  # sys.exit() in main.py soft-resets, then main.py runs again
    assert "main done True" in vb.console()
    assert mp(vb, "resume", "exec", "print(1)").strip() == "1"


def test_a_machine_wdt_nobody_feeds_resets_the_board_with_the_watchdog_cause(vb):
    # The stand-in bites whatever the board is doing: here main.py spins without yielding.
    (vb.flash / "main.py").write_text(
        "import machine, os\n"
        "if 'w.txt' not in os.listdir('/'):\n"
        "    open('/w.txt', 'w').write('x')\n"
        "    w = machine.WDT(timeout=500)\n"
        "    w.feed()\n"
        "    while True:\n"
        "        pass\n"
        "print('after reset, cause WDT_RESET:', machine.reset_cause() == machine.WDT_RESET)\n"
    )
    vb.power_cut()
    vb.power_on()
    wait_for(lambda: "after reset" in vb.console(), 15)
    assert "watchdog" in vb.faults.log
    assert "after reset, cause WDT_RESET: True" in vb.console()
    assert mp(vb, "resume", "exec", "print(1)").strip() == "1"


def test_a_ctrl_c_that_lands_in_the_watchdog_stand_ins_thread_reaches_the_code_at_its_next_feed(vb):
    # The unix port raises a host Ctrl-C (SIGINT) in whichever thread the kernel hands it to,
    # now and then the WDT stand-in's.  That thread sent the process a new SIGINT through
    # os.system(), which ignores SIGINT while it waits: the Ctrl-C was lost, the node ran on and
    # mpremote hung (test_romfs_provision, once in a while under load).  The thread's wait is
    # made to raise here, as the signal would; the code that feeds the watchdog must then get
    # the KeyboardInterrupt at its next feed().
    code = (
        "import machine, time\n"
        "class T:\n"
        "    ticks_ms = time.ticks_ms\n"
        "    ticks_diff = time.ticks_diff\n"
        "    def sleep_ms(ms):\n"
        "        raise KeyboardInterrupt\n"
        "w = machine.WDT(timeout=60000)\n"
        "real = machine.time\n"
        "machine.time = T\n"
        "try:\n"
        "    w._watch()\n"
        "finally:\n"
        "    machine.time = real\n"
        "try:\n"
        "    w.feed()\n"
        "    print('lost')\n"
        "except KeyboardInterrupt:\n"
        "    print('handed on')\n"
    )
    assert mp(vb, "exec", code).strip().splitlines()[-1] == "handed on"


def test_a_board_with_a_pico_w_flash_has_its_littlefs_for_stock_mpremote(tmp_path):
    # `flash="pico_w"`: the board's / is a real LittleFS of a Pico W's 848 KiB (its 4-KiB
    # blocks, its MicroPython's settings) in state/flash.img, not a host directory. Stock
    # mpremote copies to it and reads it back; a power cut in the middle of a copy leaves the
    # file system mountable with the file as LittleFS committed it (nothing of an unclosed
    # file), and the files before it whole.
    src = tmp_path / "big.bin"
    src.write_bytes(bytes(range(256)) * 80)
    with VirtualBoard(tmp_path / "vb", "sim", flash="pico_w") as vb:
        vb.wait_booted()
        out = mp(vb, "exec", "import os; print(os.statvfs('/')[:4])")
        assert out.strip() == "(4096, 4096, 212, 210)", out  # an empty Pico W: two blocks of metadata
        mp(vb, "fs", "cp", str(src), ":kept.bin")
        assert not (vb.flash / "kept.bin").exists() and (vb.state / "flash.img").stat().st_size == 848 * 1024
        vb.cut_power_after(3000)
        cp = [MPREMOTE, "connect", vb.port, "fs", "cp", str(src), ":cut.bin"]
        p = subprocess.Popen(cp, stdout=subprocess.DEVNULL)
        wait_for(lambda: not vb.powered)
        p.kill()
        p.wait()
        vb.power_on()
        vb.wait_booted()
        code = "import os, hashlib; print(sorted(os.listdir('/')), os.stat('/cut.bin')[6], " \
               "hashlib.sha256(open('/kept.bin', 'rb').read()).digest().hex())"  # fmt: skip
        names, cut, digest = mp(vb, "exec", code).strip().rsplit(" ", 2)
        assert names == "['cut.bin', 'kept.bin']" and cut == "0"
        assert digest == hashlib.sha256(src.read_bytes()).hexdigest()
