"""Clock mailboxes (docs/abi.md §10): an exchange whose `done` is written just before
the guest frees its slot is still sampled; N exchanges give N samples."""

from __future__ import annotations

import os
import struct
import time
import uuid

from hypertrace import abi
from hypertrace.guest.mailbox import Mailbox
from hypertrace.host.control import DomainClock
from hypertrace.host.mailbox import MailboxServer
from hypertrace.host.region import Region

RING = 4096


def _region(tag):
    path = "/dev/shm/ht-mbox-%s-%d-%s" % (tag, os.getpid(), uuid.uuid4().hex[:6])
    return Region.create(path, "mbox", n_rings=1, ring_size=RING)


def _claim(region, i, pid):
    struct.pack_into("<II", region.mm, abi.MBOX_OFF + i * abi.MBOX_SIZE, abi.MBOX_CLAIMED, pid)


def _settle(srv, dc, want, timeout=1.0):
    deadline = time.monotonic() + timeout
    while dc.mailbox_samples < want and time.monotonic() < deadline:
        time.sleep(0.005)


def test_every_exchange_is_sampled_even_when_the_slot_is_freed_at_once():
    """Each claim makes a few exchanges and frees its slot right after the last `done`
    (as `Control.close` does): the host must take that last exchange too."""
    region = _region("rel")
    try:
        dc = DomainClock("mbox", region.header.session_id)
        srv = MailboxServer({dc.session_id: dc})
        srv.add(region)
        srv.start()
        n = 0
        for _claim_no in range(8):
            _claim(region, 0, os.getpid())
            mb = Mailbox(region.mm, 0, time.monotonic_ns)
            for _ in range(3):
                assert mb.exchange() is not None
                n += 1
            mb.release()                  # at once: no wait for the host
            time.sleep(0.01)              # several host polls with the slot free
        _settle(srv, dc, n)
        srv.close()
        print("FIGURES exchanges", n, "samples", dc.mailbox_samples)
        assert dc.mailbox_samples == n == len(dc.samples)
        for t1, t2, t3, t4 in dc.samples:
            assert t1 <= t2 <= t3 <= t4
    finally:
        region.close(remove=True)


def test_a_freed_slot_claimed_at_once_by_another_process_keeps_both_samples():
    """The slot is freed and claimed again (another pid, `req` continued) before the
    host looked: the first claimant's last exchange is sampled, then the new one's."""
    region = _region("reclaim")
    try:
        dc = DomainClock("mbox", region.header.session_id)
        srv = MailboxServer({dc.session_id: dc})
        srv.add(region)
        srv.start()
        _claim(region, 0, os.getpid())
        a = Mailbox(region.mm, 0, time.monotonic_ns)
        assert a.exchange() is not None
        with srv.lock:
            a.release()
            _claim(region, 0, os.getpid() + 1)
            b = Mailbox(region.mm, 0, time.monotonic_ns)
            assert b.req == a.req       # continued from the slot
        assert b.exchange() is not None
        b.release()
        _settle(srv, dc, 2)
        srv.close()
        print("FIGURES reclaim samples", dc.mailbox_samples)
        assert dc.mailbox_samples == 2
    finally:
        region.close(remove=True)


def test_a_slot_retired_by_a_new_boot_gives_its_pending_sample_to_nobody():
    """An exchange answered before a new boot's hello and finished after it is not the
    new boot's: freed or claimed anew, its sample goes to no clock."""
    region = _region("retire")
    try:
        dc = DomainClock("mbox", region.header.session_id)
        srv = MailboxServer({dc.session_id: dc})
        srv.add(region)
        _claim(region, 0, os.getpid())
        mb = Mailbox(region.mm, 0, time.monotonic_ns)
        o = abi.MBOX_OFF
        mb.req += 1
        struct.pack_into("<Q", region.mm, o + abi.M_T1, time.monotonic_ns())
        struct.pack_into("<I", region.mm, o + abi.M_REQ, mb.req)
        srv.poll()                                          # answered
        assert struct.unpack_from("<I", region.mm, o + abi.M_ANS)[0] == mb.req
        srv.retire(region.header.session_id)               # a new boot's hello
        struct.pack_into("<Q", region.mm, o + abi.M_T4, time.monotonic_ns())
        struct.pack_into("<I", region.mm, o + abi.M_DONE, mb.req)
        mb.release()
        srv.poll()
        assert dc.mailbox_samples == 0 and not dc.samples
    finally:
        region.close(remove=True)
