"""Synthetic "covers": the bundled demo data, made from nothing but a seed.

Cover identification has to find what survives a re-interpretation of a song: its melody (pitch contour and
rhythm) and its harmony. So each *work* here is a composition in scale degrees and beats -- a melody over a chord
progression, arranged as a small song form (AABA, ABAB...) -- and each *performance* renders it with the things a
cover changes: key (±5 semitones), tempo (0.8-1.25x), instrument timbre and articulation, vibrato, accompaniment
pattern, mix, where the recording starts, and background noise. The variations are chosen to be realistic yet
leave the pitch contour, rhythm and harmony intact, so a small CQT model can learn the work from a few
performances.

Determinism: every work draws from its own ``SeedSequence(seed, spawn_key=(w,))`` and every performance from
``SeedSequence(seed, spawn_key=(w, p))`` (the children ``SeedSequence(seed).spawn`` would make), so a file's
content depends only on the seed and its own indices, never on iteration order or on how many works are made.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from csi_model.atomic import write_text_atomic
from csi_model.audio import SAMPLE_RATE, write_wav

MAX_TRANSPOSE = 5
HIGH_REGISTER_MIDI = 66.5
"""Mean melody pitch (MIDI) from which a performance counts as ``register: high``: about the median of the demo."""
DEMO_LABELS = ("mode", "register", "batch_tag")
"""Labels every synthetic catalog line carries: ``mode`` (of the work) and ``register`` (of the performance) are
audible by construction; ``batch_tag`` is a coin flip that nothing in the audio depends on."""
BATCH_TAGS = ("A", "B")
TEMPO_RANGE = (0.8, 1.25)
SNR_DB_RANGE = (12.0, 30.0)
BEATS_PER_BAR = 4
BARS_PER_PHRASE = 4

_SCALES = {  # semitone offsets of the seven scale degrees
    "major": np.array([0, 2, 4, 5, 7, 9, 11]),
    "minor": np.array([0, 2, 3, 5, 7, 8, 10]),
    "dorian": np.array([0, 2, 3, 5, 7, 9, 10]),
    "mixolydian": np.array([0, 2, 4, 5, 7, 9, 10]),
}
_FORMS = ("AABA", "ABAB", "AABB", "ABAC")
_NOTE_BEATS = np.array([0.5, 1.0, 1.5, 2.0])
_NOTE_BEAT_WEIGHTS = np.array([0.35, 0.4, 0.1, 0.15])
_MELODY_STEPS = np.array([-3, -2, -1, 0, 1, 2, 3])
_MELODY_STEP_WEIGHTS = np.array([0.05, 0.15, 0.25, 0.1, 0.25, 0.15, 0.05])
_MELODY_DEGREES = (-3, 11)  # range of the tune in scale degrees around the tonic
_REST_PROB = 0.08


@dataclass(frozen=True)
class Voice:
    """One monophonic line: notes as onset and length in beats, pitch as MIDI number (NaN = rest)."""

    onsets: np.ndarray  # [N] beats
    lengths: np.ndarray  # [N] beats
    pitches: np.ndarray  # [N] MIDI


class Phrase(NamedTuple):
    """A few bars of a work in the abstract: scale degrees (NaN = rest) and beats, before any key or tempo."""

    degrees: np.ndarray  # [N] melody, scale degrees above the tonic
    onsets: np.ndarray  # [N] beats from the phrase start
    lengths: np.ndarray  # [N] beats
    chord_roots: np.ndarray  # [bars] scale degree of each bar's triad


@dataclass(frozen=True)
class Work:
    """What every cover of a work shares: the tune, the harmony under it, and a nominal tempo."""

    bpm: float
    total_beats: float
    melody: Voice
    chords: tuple[Voice, Voice, Voice]  # root, third, fifth of each bar's triad
    bass: Voice
    scale: str = "major"  # the mode its tune and chords are built on (a key of _SCALES)

    @property
    def mode(self) -> str:
        """``major`` or ``minor``: the quality of the scale's third (mixolydian counts as major, dorian as minor)."""
        return "major" if _SCALES[self.scale][2] == 4 else "minor"


@dataclass(frozen=True)
class Timbre:
    """An instrument: harmonic amplitudes (the brightness / colour) and an amplitude envelope."""

    harmonics: np.ndarray  # [H] relative amplitude of partial h = 1..H, unit energy
    attack_s: float
    decay_per_s: float  # exponential decay rate while the note sounds (0 = organ, 3 = plucked)
    release_s: float


@dataclass(frozen=True)
class Rendition:
    """What one performance changes. ``describe`` is its dataset.txt ``version`` text."""

    transpose: int
    tempo: float
    start_beat: float  # > 0: the recording cuts into the song
    lead_silence_s: float  # > 0: the recording starts before the song
    lead: Timbre
    pad: Timbre
    bass: Timbre
    vibrato_hz: float
    vibrato_cents: float
    pulsed_chords: bool  # chords re-struck on every beat instead of held for the bar
    pad_gain: float
    bass_gain: float
    snr_db: float
    peak: float

    def describe(self) -> str:
        start = f"cut {self.start_beat:g} beats" if self.start_beat else f"lead-in {self.lead_silence_s:.2f} s"
        vibrato = f"vibrato {self.vibrato_hz:.1f} Hz/{self.vibrato_cents:.0f} c" if self.vibrato_cents else "no vibrato"
        return (
            f"key {self.transpose:+d} st, tempo {self.tempo:.3f}x, {start}, {vibrato}, "
            f"{'pulsed' if self.pulsed_chords else 'held'} chords, snr {self.snr_db:.1f} dB"
        )


# ---------------------------------------------------------------------------------------------------------------
# Composition: the work, in scale degrees and beats.


def compose_work(rng: np.random.Generator, seconds: float) -> Work:
    """A tune over a diatonic chord progression, two or three 4-bar phrases arranged in a song form."""
    scale_name = str(rng.choice(sorted(_SCALES)))
    scale = _SCALES[scale_name]
    tonic = 57 + int(rng.integers(12))  # A3 .. G#4
    bpm = float(rng.uniform(84.0, 132.0))
    form = _FORMS[int(rng.integers(len(_FORMS)))]
    phrases = {name: _compose_phrase(rng) for name in sorted(set(form))}
    bars_needed = int(np.ceil(seconds * bpm / 60.0 / BEATS_PER_BAR))
    sections = [form[i % len(form)] for i in range(-(-bars_needed // BARS_PER_PHRASE))]
    parts = [phrases[name] for name in sections]
    phrase_starts = np.arange(len(parts)) * float(BARS_PER_PHRASE * BEATS_PER_BAR)
    melody = Voice(
        np.concatenate([part.onsets + start for part, start in zip(parts, phrase_starts)]),
        np.concatenate([part.lengths for part in parts]),
        _degree_to_midi(np.concatenate([part.degrees for part in parts]), scale, tonic),
    )
    roots = np.concatenate([part.chord_roots for part in parts])
    bar_onsets = np.arange(len(roots)) * float(BEATS_PER_BAR)
    bar_lengths = np.full(len(roots), float(BEATS_PER_BAR))
    chords = tuple(
        Voice(bar_onsets, bar_lengths, _degree_to_midi(roots + 2 * k, scale, tonic - 12)) for k in range(3)
    )
    bass = Voice(bar_onsets, bar_lengths, _degree_to_midi(roots, scale, tonic - 24))
    return Work(bpm=bpm, total_beats=seconds * bpm / 60.0, melody=melody, chords=chords, bass=bass,
                scale=scale_name)


def _compose_phrase(rng: np.random.Generator) -> Phrase:
    """One 4-bar phrase: a chord root per bar and a melody over it.

    Each bar's first note is a tone of its chord, so tune and harmony agree; the rest is a stepwise walk, which is
    what makes melodies singable and gives a contour worth recognising.
    """
    roots = np.concatenate([[0], rng.choice([1, 2, 3, 4, 5], size=BARS_PER_PHRASE - 2), [rng.choice([0, 4])]])
    degrees, onsets, lengths = [], [], []
    degree = int(rng.integers(0, 5))
    for bar, root in enumerate(roots):
        rhythm = _bar_rhythm(rng)
        starts = bar * BEATS_PER_BAR + np.concatenate([[0.0], np.cumsum(rhythm)[:-1]])
        chord_tones = root + np.array([0, 2, 4, 7, 9, 11, -3, -5])
        degree = int(chord_tones[np.argmin(np.abs(chord_tones - degree))])
        bar_degrees = [float(degree)]
        for _ in rhythm[1:]:
            step = int(rng.choice(_MELODY_STEPS, p=_MELODY_STEP_WEIGHTS))
            degree = int(np.clip(degree + step, *_MELODY_DEGREES))
            bar_degrees.append(np.nan if rng.random() < _REST_PROB else float(degree))
        degrees.append(bar_degrees)
        onsets.append(starts)
        lengths.append(rhythm)
    return Phrase(np.concatenate(degrees), np.concatenate(onsets), np.concatenate(lengths), roots.astype(float))


def _bar_rhythm(rng: np.random.Generator) -> np.ndarray:
    """Note lengths (beats) that fill one bar exactly."""
    lengths = []
    left = float(BEATS_PER_BAR)
    while left > 0:
        fits = _NOTE_BEATS <= left
        weights = _NOTE_BEAT_WEIGHTS * fits
        lengths.append(float(rng.choice(_NOTE_BEATS, p=weights / weights.sum())))
        left -= lengths[-1]
    return np.array(lengths)


def _degree_to_midi(degrees: np.ndarray, scale: np.ndarray, tonic: int) -> np.ndarray:
    """Scale degrees (any integer, NaN = rest) to MIDI pitches of the mode ``scale`` on ``tonic``."""
    degrees = np.asarray(degrees, dtype=float)
    rest = np.isnan(degrees)
    whole = np.where(rest, 0, degrees).astype(int)
    midi = tonic + 12 * (whole // 7) + scale[whole % 7]
    return np.where(rest, np.nan, midi.astype(float))


# ---------------------------------------------------------------------------------------------------------------
# Performance: how one cover renders the work.


def draw_rendition(rng: np.random.Generator, work: Work) -> Rendition:
    """Draw the choices of one performance; bounded so the melody and harmony stay the dominant content."""
    max_cut = min(8.0, 2.0 * np.floor(work.total_beats / 8.0))  # half bars, at most a quarter of the song
    cut = bool(rng.random() < 0.5) and max_cut > 0
    vibrato = bool(rng.random() < 0.5)
    return Rendition(
        transpose=int(rng.integers(-MAX_TRANSPOSE, MAX_TRANSPOSE + 1)),
        tempo=float(np.exp(rng.uniform(*np.log(TEMPO_RANGE)))),
        start_beat=float(rng.choice(np.arange(2.0, max_cut + 1.0, 2.0))) if cut else 0.0,
        lead_silence_s=0.0 if cut else float(rng.uniform(0.0, 2.0)),
        lead=_draw_timbre(rng, n_harmonics=10),
        pad=_draw_timbre(rng, n_harmonics=6),
        bass=_draw_timbre(rng, n_harmonics=6),
        vibrato_hz=float(rng.uniform(4.5, 6.5)) if vibrato else 0.0,
        vibrato_cents=float(rng.uniform(10.0, 35.0)) if vibrato else 0.0,
        pulsed_chords=bool(rng.random() < 0.5),
        pad_gain=float(rng.uniform(0.2, 0.4)),
        bass_gain=float(rng.uniform(0.3, 0.6)),
        snr_db=float(rng.uniform(*SNR_DB_RANGE)),
        peak=float(rng.uniform(0.4, 0.95)),
    )


def _draw_timbre(rng: np.random.Generator, n_harmonics: int) -> Timbre:
    """A harmonic spectrum with random brightness (spectral slope), jitter, and sometimes weak even partials."""
    h = np.arange(1, n_harmonics + 1)
    amplitudes = h ** -rng.uniform(0.7, 2.0) * np.exp(rng.normal(0.0, 0.3, n_harmonics))
    if rng.random() < 0.3:  # clarinet-like: hollow, odd partials dominate
        amplitudes[1::2] *= rng.uniform(0.1, 0.5)
    return Timbre(
        harmonics=amplitudes / np.sqrt(np.sum(amplitudes**2)),
        attack_s=float(rng.uniform(0.005, 0.06)),
        decay_per_s=float(rng.choice([0.0, rng.uniform(0.5, 3.0)])),
        release_s=float(rng.uniform(0.03, 0.08)),
    )


def render_performance(work: Work, rendition: Rendition, rng: np.random.Generator) -> np.ndarray:
    """The performance as a float32 signal ``[N]`` at 16 kHz, peak ``rendition.peak``."""
    seconds_per_beat = 60.0 / (work.bpm * rendition.tempo)
    song_s = (work.total_beats - rendition.start_beat) * seconds_per_beat
    n = int(round((rendition.lead_silence_s + song_s) * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE  # [N] seconds

    def timeline(voice: Voice, jitter_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        onsets = rendition.lead_silence_s + (voice.onsets - rendition.start_beat) * seconds_per_beat
        onsets = onsets + np.clip(rng.normal(0.0, jitter_s, len(onsets)), -2 * jitter_s, 2 * jitter_s)
        ends = onsets + voice.lengths * seconds_per_beat * 0.92
        return onsets, ends, voice.pitches + rendition.transpose

    vibrato = rendition.vibrato_cents / 1200.0 * np.sin(2 * np.pi * rendition.vibrato_hz * t)
    mix = _render_voice(t, *timeline(work.melody, 0.008), rendition.lead, vibrato)
    for chord_voice in work.chords:
        voice = _pulse(chord_voice) if rendition.pulsed_chords else chord_voice
        mix += rendition.pad_gain * _render_voice(t, *timeline(voice, 0.004), rendition.pad)
    mix += rendition.bass_gain * _render_voice(t, *timeline(work.bass, 0.004), rendition.bass)
    mix += _pink_noise(rng, n) * np.sqrt(np.mean(mix**2) / 10 ** (rendition.snr_db / 10))
    return (mix * (rendition.peak / np.max(np.abs(mix)))).astype(np.float32)


def _pulse(voice: Voice) -> Voice:
    """Split each held note into one note per beat (a strummed / comped accompaniment)."""
    beats = voice.lengths.astype(int)
    onsets = np.repeat(voice.onsets, beats) + np.concatenate([np.arange(b) for b in beats])
    return Voice(onsets, np.full(len(onsets), 0.8), np.repeat(voice.pitches, beats))


def _render_voice(
    t: np.ndarray,
    onsets: np.ndarray,
    ends: np.ndarray,
    pitches: np.ndarray,
    timbre: Timbre,
    vibrato_octaves: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Additive synthesis of a monophonic line over the sample times ``t`` ``[N]``.

    Each sample looks up the note sounding at it (the last onset before it), so pitch, phase and envelope are
    whole-array operations; the phase is the running integral of the frequency, which keeps it continuous across
    note changes and under vibrato.
    """
    note = np.clip(np.searchsorted(onsets, t, side="right") - 1, 0, len(onsets) - 1)  # [N] index of current note
    since = t - onsets[note]
    until = ends[note] - t
    envelope = (
        np.clip(since / timbre.attack_s, 0.0, 1.0)
        * np.exp(-timbre.decay_per_s * np.maximum(since, 0.0))
        * np.clip(until / timbre.release_s, 0.0, 1.0)
    )
    sounding = ~np.isnan(pitches[note])
    envelope *= sounding
    midi = np.where(sounding, pitches[note], 60.0)
    f0 = 440.0 * 2.0 ** ((midi - 69.0) / 12.0 + vibrato_octaves)  # [N] Hz
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    # sin(h·φ) by the Chebyshev recurrence sin(hφ) = 2cos(φ)·sin((h-1)φ) - sin((h-2)φ): two transcendental
    # calls per voice instead of one per partial, the bulk of the synthesis time.
    two_cos = 2.0 * np.cos(phase)
    partial, previous = np.sin(phase), np.zeros_like(phase)
    out = np.zeros_like(t)
    nyquist_guard = 0.45 * SAMPLE_RATE
    for h, amplitude in enumerate(timbre.harmonics, start=1):
        out += amplitude * partial * (h * f0 < nyquist_guard)
        partial, previous = two_cos * partial - previous, partial
    return out * envelope


def _pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-RMS 1/f noise (room tone, tape hiss and crowd are closer to pink than to white)."""
    n_fft = 1 << max(0, int(n - 1).bit_length())  # a power of two: numpy's FFT is slow on awkward lengths
    spectrum = rng.normal(size=n_fft // 2 + 1) + 1j * rng.normal(size=n_fft // 2 + 1)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE)
    noise = np.fft.irfft(spectrum / np.sqrt(np.maximum(freqs, 20.0)), n_fft)[:n]
    return noise / np.sqrt(np.mean(noise**2))


# ---------------------------------------------------------------------------------------------------------------
# The dataset on disk.


def register(work: Work, rendition: Rendition) -> str:
    """``high`` or ``low``: where the performed melody sits -- its mean pitch after the performance's
    transposition, against ``HIGH_REGISTER_MIDI`` (a singer's tessitura, a flute against a cello)."""
    return "high" if float(np.nanmean(work.melody.pitches)) + rendition.transpose >= HIGH_REGISTER_MIDI else "low"


def _batch_tag(seed: int, work: int, perf: int) -> str:
    """A random tag from its own stream (spawn key ``(w, p, 1)``): drawing it never shifts the audio's random
    numbers, and no audio property depends on it -- the control a label probe must score at chance."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(work, perf, 1)))
    return BATCH_TAGS[int(rng.integers(len(BATCH_TAGS)))]



def generate_covers(
    out_dir: Path,
    works: int,
    perfs: int,
    seed: int = 0,
    seconds: float = 30.0,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> Path:
    """Write ``works`` x ``perfs`` performances to ``out_dir/wav/`` and return the ``out_dir/dataset.txt`` catalog.

    Works are rendered by ``workers`` processes (default: one per core); each file depends only on the seed and
    its indices, so the bytes are the same for any number of workers. The catalog is written last, so a reader
    never finds it listing a wav that is not there yet. ``progress(done, total)`` is called after each work with
    the performances done so far.
    """
    if works < 1 or perfs < 1:
        raise ValueError(f"need at least one work and one performance per work, got works={works}, perfs={perfs}")
    if seconds < 1.0:
        raise ValueError(f"seconds must be at least 1 (one beat of a tune), got {seconds}")
    out_dir = Path(out_dir)
    digits = max(3, len(str(works - 1)))
    tasks = [(out_dir, w, perfs, seed, seconds, digits) for w in range(works)]
    workers = max(1, min(workers or os.cpu_count() or 1, works))
    lines: list[str] = []
    with contextlib.ExitStack() as stack:
        if workers == 1:
            results = map(_write_work, tasks)
        else:
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")))
            results = pool.map(_write_work, tasks)
        for records in results:
            done = len(lines)
            lines += records
            for k in range(done + 1, len(lines) + 1) if progress is not None else ():
                progress(k, works * perfs)
    catalog = out_dir / "dataset.txt"
    write_text_atomic(catalog, "\n".join(lines) + "\n")
    return catalog


def _write_work(task: tuple[Path, int, int, int, float, int]) -> list[str]:
    """Render and write every performance of work ``w``; returns their catalog lines in performance order."""
    out_dir, w, perfs, seed, seconds, digits = task
    work = compose_work(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(w,))), seconds)
    lines = []
    for p in range(perfs):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(w, p)))
        rendition = draw_rendition(rng, work)
        audio = render_performance(work, rendition, rng)
        perf = f"w{w:0{digits}d}_p{p}"
        wav = f"wav/{perf}.wav"
        write_wav(out_dir / wav, audio, SAMPLE_RATE)
        record = {
            "perf": perf,
            "wav": wav,
            "dur_s": round(len(audio) / SAMPLE_RATE, 2),
            "work": f"work_{w:0{digits}d}",
            "version": rendition.describe(),
            "mode": work.mode,
            "register": register(work, rendition),
            "batch_tag": _batch_tag(seed, w, p),
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    return lines
