"""The safe-write transport against a virtual board: one round trip for a small file, the
on-board hash check refusing a corrupted arrival (old file kept, temp removed), big files in
chunks, busy and missing ports."""

from __future__ import annotations

import fcntl
import os

import pytest

from umeter.errors import DeviceError, TransportError
from umeter.transport import Board
from umeter_hil.vboard import VirtualBoard


@pytest.fixture
def vb(tmp_path):
    with VirtualBoard(tmp_path / "vb", "sim") as b:
        b.wait_booted()
        yield b


def test_write_file_creates_directories_and_replaces_atomically(vb):
    data = bytes(range(256)) * 50  # 12.8 KB: several chunks
    with Board(vb.port) as b:
        b.write_file("/lib/pkg/blob.bin", data)
        b.write_file("/small.txt", b"v1")
        b.write_file("/small.txt", b"v2")
        b.write_file("/empty", b"")
        assert b.hashes(["/small.txt", "/nope"])["/nope"] is None
        assert b.read_file("/lib/pkg/blob.bin") == data
    assert (vb.flash / "lib" / "pkg" / "blob.bin").read_bytes() == data
    assert (vb.flash / "small.txt").read_bytes() == b"v2"
    assert (vb.flash / "empty").read_bytes() == b""
    assert not list(vb.flash.rglob("*.tmp"))


def test_a_corrupted_arrival_is_refused_and_the_old_file_kept(vb):
    with Board(vb.port) as b:
        b.write_file("/cfg.json", b"old")
        b.exec("_um_h = lambda p: '0' * 64")  # the board now computes a wrong digest
        with pytest.raises(DeviceError, match=r"/cfg\.json arrived corrupted"):
            b.write_file("/cfg.json", b"new")
    assert (vb.flash / "cfg.json").read_bytes() == b"old"
    assert not (vb.flash / "cfg.json.tmp").exists()


def test_small_file_costs_one_exec(vb, monkeypatch):
    with Board(vb.port) as b:
        b.hashes(["/x"])  # helpers loaded
        calls = []
        real = b._t.exec_raw
        monkeypatch.setattr(b._t, "exec_raw", lambda code, **kw: calls.append(code) or real(code, **kw))
        b.write_file("/one.txt", b"hello")
        assert len(calls) == 1


def test_busy_port_and_missing_port_are_transport_errors(vb):
    fd = os.open(vb.port, os.O_RDWR | os.O_NOCTTY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(TransportError, match="is busy"):
            Board(vb.port).open()
    finally:
        os.close(fd)
    with pytest.raises(TransportError, match="no such port /dev/ttyUSB-x"):
        Board("/dev/ttyUSB-x").open()


def test_a_port_without_a_repl_is_a_clear_error_with_the_bytes_received(tmp_path):
    import pty
    import threading

    master, slave = pty.openpty()
    os.set_blocking(master, False)
    stop = threading.Event()

    def chatter() -> None:  # a device that only prints a bootloader banner
        while not stop.is_set():
            try:
                os.read(master, 1024)
                os.write(master, b"rst:0x1 (POWERON_RESET),boot:0x13\r\n")
            except BlockingIOError:
                pass
            stop.wait(0.05)

    th = threading.Thread(target=chatter, daemon=True)
    th.start()
    try:
        with pytest.raises(TransportError, match="could not enter the raw REPL after 1 attempts") as e:
            Board(os.ttyname(slave), timeout=0.5, retries=1).open()
        assert "POWERON_RESET" in str(e.value)
    finally:
        stop.set()
        th.join()
        os.close(master)
        os.close(slave)
