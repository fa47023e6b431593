"""Real-time factor and peak memory of each transcription engine on CPU, for 10 s, 60 s and 5 min.

Speech is made by espeak-ng (distinct sentences, cycled), so the word error rate is measured too.
Each (engine, input) runs in a fresh process, as a worker does: the model is loaded once (load time
reported apart), then the file is decoded and transcribed; the wall time of that is what counts.

- RTF = wall seconds / audio seconds (lower is faster; 0.10 = ten times faster than real time)
- speed = audio seconds / wall second (the inverse)
- CPU s per audio s = user + system CPU time / audio seconds (barely moved by other load on a shared
  machine, unlike the wall time; the engines' fair comparison there)
- peak RSS = the process's maximum resident memory (model + audio + decoding)

    .venv/bin/python bench/transcription.py [--quick] [--threads 2] [--engines fw-int8,ow-fp32]

Engines: fw-int8 (the default: faster-whisper, int8, a long input cut at pauses into one piece per
core), fw-int8-sequential (the same, one piece at a time: TRANSCRIPTION_PARALLEL=1), fw-fp32, fw-int8-batched (faster-whisper's
BatchedInferencePipeline, batch 8), ow-fp32 (openai-whisper, fp32; the same tiny.en weights,
converted). Results go to bench/results/transcription.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SENTENCES = (
    "Please send the quarterly report to the finance team before Friday afternoon.",
    "Good morning everyone. Thank you for joining the meeting.",
    "Our new office opens next month, and everyone will have a desk near the window.",
    "The train to the airport leaves every twenty minutes from the main station.",
    "We should review the marketing plan together on Tuesday.",
    "The kitchen on the third floor is closed for cleaning this week.",
    "Remember to lock the door when you leave the building in the evening.",
    "The customer asked for a new version of the contract with a longer warranty.",
)
ENGINES = {
    "fw-int8": ("faster-whisper", {"TRANSCRIPTION_COMPUTE_TYPE": "int8"}),
    "fw-int8-sequential": (
        "faster-whisper",
        {"TRANSCRIPTION_COMPUTE_TYPE": "int8", "TRANSCRIPTION_PARALLEL": "1"},
    ),
    "fw-fp32": ("faster-whisper", {"TRANSCRIPTION_COMPUTE_TYPE": "float32"}),
    "fw-int8-batched": (
        "faster-whisper",
        {"TRANSCRIPTION_COMPUTE_TYPE": "int8", "TRANSCRIPTION_BATCH_SIZE": "8"},
    ),
    "ow-fp32": ("openai-whisper", {}),
}
LENGTHS = {"10 s": 10, "60 s": 60, "5 min": 300}


def make_input(seconds: int, directory: Path) -> tuple[Path, str]:
    """``seconds`` of speech (whole sentences, cycled; sox joins them) and its text."""
    spoken = []
    for i, sentence in enumerate(SENTENCES):
        wav = directory / f"sentence-{i}.wav"
        if not wav.exists():
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), sentence], check=True)
        length = float(
            subprocess.run(["soxi", "-D", str(wav)], capture_output=True, text=True, check=True).stdout
        )
        spoken.append((wav, sentence, length))
    parts: list[tuple[Path, str, float]] = []
    while not parts or sum(p[2] for p in parts) + spoken[len(parts) % len(spoken)][2] <= seconds + 1:
        parts.append(spoken[len(parts) % len(spoken)])
    path = directory / f"speech-{seconds}.wav"
    subprocess.run(["sox", *(str(p[0]) for p in parts), str(path)], check=True)
    return path, " ".join(p[1] for p in parts)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(engine: str, path: str, repeat: int) -> dict[str, object]:
    """Run in the child process: load once, then decode + transcribe ``path``."""
    import django

    django.setup()
    # Nothing else here: the WER is computed by the parent (its normaliser imports torch, whose
    # OpenMP runtime would slow CTranslate2 down in this process).
    from transcription.engines import Options, decode, get_engine

    started = time.perf_counter()
    model = get_engine(engine, "tiny.en")
    load = time.perf_counter() - started
    # A worker has served jobs before: warm the lazily loaded parts (VAD model, kernels) first.
    model.transcribe(decode(path, 3600)[: 16_000 * 5], Options(language="en"))
    walls, cpus = [], []
    for _ in range(repeat):  # the best of a few: this machine is shared, noise only ever adds time
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        audio = decode(path, 3600)
        result = model.transcribe(audio, Options(language="en"))
        walls.append(time.perf_counter() - started)
        cpus.append(_cpu_seconds() - cpu_started)
    wall, cpu = min(walls), min(cpus)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"load_s": round(load, 2), "wall_s": round(wall, 2), "audio_s": round(result.duration, 1),
            "rtf": round(wall / result.duration, 4), "speed": round(result.duration / wall, 1),
            "cpu_s": round(cpu, 2), "cpu_per_audio_s": round(cpu / result.duration, 4),
            "peak_rss_mb": round(peak_mb), "text": result.text}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10 s and 60 s only")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--repeat", type=int, default=2, help="runs per input; the fastest counts")
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.repeat)))
        return
    from tests.transcription.speech import wer

    tmp = Path(tempfile.mkdtemp(prefix="bench-transcription-"))
    lengths = {k: v for k, v in LENGTHS.items() if not (args.quick and v > 60)}
    inputs = {label: make_input(seconds, tmp) for label, seconds in lengths.items()}
    env_base = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DATA_DIR": str(tmp),
                "TRANSCRIPTION_MODELS_DIR": str(tmp / "models"), "TRANSCRIPTION_CPU_THREADS": str(args.threads),
                "LOG_LEVEL": "WARNING"}  # fmt: skip
    for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        env_base.pop(name, None)
    rows = []
    for key in args.engines.split(","):
        engine, extra = ENGINES[key]
        for label, (path, reference) in inputs.items():
            done = subprocess.run(
                [sys.executable, __file__, "--child", engine, str(path), "--repeat", str(args.repeat)],
                env={**env_base, **extra}, capture_output=True, text=True, check=True, cwd=ROOT,
            )  # fmt: skip
            row = {"engine": key, "input": label, **json.loads(done.stdout.strip().splitlines()[-1])}
            row["wer"] = round(wer(reference, str(row.pop("text"))), 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = ROOT / "bench" / "results" / "transcription.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"threads": args.threads, "load_average": os.getloadavg(), "rows": rows}, indent=2)
    )
    print(f"\nwritten to {out}\n")
    load = os.getloadavg()[0]
    print(
        f"load average at the end: {load:.2f} (on a shared machine wall times grow with it; CPU time hardly)"
    )
    print(
        "| engine | input | RTF (wall / audio) | speed | CPU s per audio s | wall | model load | peak RSS | WER |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['engine']} | {r['input']} ({r['audio_s']} s) | {r['rtf']:.3f} | {r['speed']}× | {r['cpu_per_audio_s']:.3f} "
              f"| {r['wall_s']} s | {r['load_s']} s | {r['peak_rss_mb']} MB | {r['wer']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
