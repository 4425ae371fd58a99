"""Which pieces of one torrent are on disk: the hash check of existing data, and the resume file.

At start the torrent trusts valid resume data (storage.py ``load_resume``) or, if data files
exist, checks every piece: :meth:`Checker.jobs` hands out hash jobs (workers.py reads the spans off
the event loop), at most ``jobs_in_flight`` at a time.  While the torrent runs, the resume file is
rewritten every ``resume_interval_s`` once something changed, data synced first.  A save at completion or
at stop does not wait for the disk: it lists the pieces written since the last flush apart (resume.py
``pending``), and the next start trusts them only in the same boot, after flushing them; else it checks them.
Pure (STYLE.md): no clock or threads; jobs go back to the torrent, which submits them and reports
each result.  Out of scope: what a verified or failed piece means for the torrent (torrent.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from minibt.bitfield import Bitfield
from minibt.durable import boot_id, fsync_all
from minibt.errors import StorageError
from minibt.metainfo import Metainfo
from minibt.resume import ResumeData
from minibt.storage import PAD_PATH, Storage, load_resume, save_resume
from minibt.workers import HashJob

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, eq=False)
class CheckJobTag:
    """Tag of a hash job that checks a piece already on disk (its result goes to ``info_hash``'s torrent).

    One per Checker, compared by identity: a result of a torrent removed while checking is not taken by a
    torrent of the same info-hash added after it (a reload that changes its dir re-adds it at once)."""

    info_hash: bytes


class Checker:
    """The check queue and the resume-file schedule of one torrent."""

    def __init__(
        self,
        meta: Metainfo,
        storage: Storage,
        download_dir: str,
        *,
        resume_path: str | None,
        jobs_in_flight: int,
        resume_interval_s: float,
        now: float,
    ) -> None:
        self._meta = meta
        self._storage = storage
        self._download_dir = download_dir
        self._resume_path = resume_path
        self._jobs_in_flight = jobs_in_flight
        self._resume_interval_s = resume_interval_s
        self.tag = CheckJobTag(meta.info_hash)  # this checker's jobs' (by identity)
        # The pieces still to check are ``range(self._next, self._end)`` (of ``_order`` if set): a cursor, not a
        # queue of every index (a deque of 65536 ints is 2.5 MiB, more than all else a 16 GiB torrent keeps per piece).
        self._next = self._end = 0
        self._order: list[int] | None = None
        self._inflight = 0
        self._next_save_at = now + resume_interval_s
        self.resume_dirty = False  # something the resume file records has changed since it was saved
        self.save_in_flight = False  # a background save (save_resume's job) runs in a worker
        self._syncing: list[tuple[str, int]] = []  # that job's files (Storage.begin_sync)
        # A big info dict (its piece hashes) goes to an unnamed file beside the resume record or the data.
        for where in (os.path.dirname(resume_path) if resume_path else "", download_dir):
            if where and meta.info.spill(where):
                break

    # ------------------------------------------------------------------ checking

    def data_exists(self) -> bool:
        """True if any data file is on disk already (call before ``Storage.open`` creates them)."""
        storage = self._storage
        paths = (storage.file_path(i) for i in range(len(self._meta.files)))
        return any(os.path.exists(p) for p in paths if p != PAD_PATH)

    def check_all(self) -> None:
        """Queue every piece for checking."""
        self._next, self._end, self._order = 0, self._meta.num_pieces, None

    def check_pieces(self, pieces: list[int]) -> None:
        """Queue these pieces for checking."""
        self._next, self._end, self._order = 0, len(pieces), pieces

    def jobs(self, generation: int) -> list[HashJob]:
        """The next check jobs, as many as fit in the in-flight limit."""
        out = []
        while self._next < self._end and self._inflight < self._jobs_in_flight:
            i = self._next if self._order is None else self._order[self._next]
            self._next += 1
            out.append(
                HashJob(
                    piece=i,
                    generation=generation,
                    expected=self._meta.piece_hash(i),
                    data=None,
                    spans=tuple(self._storage.read_piece_spans(i)),
                    tag=self.tag,
                )
            )
            self._inflight += 1
        return out

    def job_done(self) -> None:
        """One check job's result arrived."""
        self._inflight -= 1

    @property
    def done(self) -> bool:
        """Every queued piece has been checked."""
        return self._next >= self._end and self._inflight == 0

    # ------------------------------------------------------------------ resume data

    def load_resume(self) -> ResumeData | None:
        """Valid resume data, or None (no resume file configured, missing, stale or damaged).

        Its ``pending`` pieces (written, not flushed when it was saved) join ``have`` if this is the boot
        that wrote them and their files flush now (the page cache still held them, or the kernel wrote them;
        a write it failed shows as an error here).  Otherwise they are queued for a check (``done`` is False).
        """
        if self._resume_path is None:
            return None
        rd, warning = load_resume(self._resume_path, self._meta, self._download_dir, self._storage.names)
        if warning:
            log.warning("%s: %s; checking data on disk", self._meta.name, warning)
        if rd is None or not rd.pending:
            return rd
        n, name = self._meta.num_pieces, self._meta.name
        have = Bitfield.from_bytes(n, rd.have)
        pending = Bitfield.from_bytes(n, rd.pending) - have
        if rd.boot_id is not None and rd.boot_id == boot_id():
            try:
                self._storage.note_unsynced(pending.indexes())
                self._storage.sync()
                return replace(rd, have=(have | pending).to_bytes())
            except StorageError as e:
                log.warning("%s: %s", name, e)
        log.info("%s: checking %d pieces written but not flushed before a restart", name, pending.count())
        self.check_pieces(list(pending.indexes()))
        return rd

    @property
    def save_at(self) -> float | None:
        """When the resume file is next rewritten; None while nothing it records has changed."""
        return self._next_save_at if self.resume_dirty and self._resume_path is not None else None

    def save_due(self, now: float) -> bool:
        return self.resume_dirty and now >= self._next_save_at

    def save_resume(
        self, now: float, *, have: Bitfield, uploaded: int, downloaded: int, wall_time: Callable[[], float],
        background: bool = False, sync: bool = True,
    ) -> Callable[[], None] | None:
        """Sync the data, then write the resume file stamped ``wall_time()``; a failure is only logged.

        Without ``sync`` nothing is flushed: the pieces written since the last flush are recorded apart as
        pending, with this boot's id (see load_resume), and the file is saved again, flushed, when due.

        ``background``: the record is taken now, the sync and the write are returned as a job for a
        worker thread (the loop must not wait for the disk), and ``save_done`` takes its outcome.  While
        a job runs no other save starts (two writers could land out of order): None, retried when due.
        """
        if self._resume_path is None or self.save_in_flight:
            return None
        self._next_save_at = now + self._resume_interval_s
        self.resume_dirty = False
        meta = self._meta
        names = self._storage.names
        path = self._resume_path
        pending = None if sync else have & self._storage.unsynced
        if pending is not None and pending.none():
            pending = None
        try:
            rd = ResumeData(
                info_hash=meta.info_hash,
                piece_length=meta.piece_length,
                num_pieces=meta.num_pieces,
                have=(have - pending if pending is not None else have).to_bytes(),
                file_sizes=self._storage.disk_file_sizes(),  # unselected files: -1
                uploaded=uploaded,
                downloaded=downloaded,
                saved_at=wall_time(),
                rules=names.rules,
                renamed=tuple(sorted(names.renamed(meta.torrent_paths()).items())),
                pending=b"" if pending is None else pending.to_bytes(),
                boot_id=None if pending is None else boot_id(),
            )
            self.resume_dirty = pending is not None  # saved again, flushed, when due
            if background:
                files = self._syncing = self._storage.begin_sync() if sync else []  # every piece in ``have`` is written
                self.save_in_flight = True

                def job() -> None:
                    fsync_all(files)  # data first, then the record that says it is there
                    save_resume(path, rd)

                return job
            if sync:
                self._storage.sync()  # data first, then the record that says it is there
            save_resume(path, rd)
        except (StorageError, OSError) as e:
            log.warning("%s: could not save resume data: %s", meta.name, e)
        return None

    def save_done(self, error: BaseException | None) -> None:
        """The background save's outcome: on failure its files are synced again by the next save."""
        self.save_in_flight = False
        self._storage.finish_sync(self._syncing, ok=error is None)
        self._syncing = []
        if error is not None:
            self.resume_dirty = True
            log.warning("%s: could not save resume data: %s", self._meta.name, error)
