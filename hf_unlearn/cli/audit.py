"""``hf-unlearn audit``: how much did unlearning change the concept vectors (original vs unlearned)?"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (
    CLIError,
    add_model_options,
    add_runtime_options,
    load_model_pair,
    output_dir,
    report,
)

EXAMPLES = """\
Per concept vector: cosine similarity, L2 distance and top-k Jaccard of the vocabulary projections of the original
and the unlearned vector; per layer the relative change of the whole MLP output matrix
(hf_unlearn.concepts.audit_concept_vectors). Cosine near 1 after behavioural forgetting means the knowledge is
likely still in the weights.

examples:
  hf-unlearn audit --original smollm2 --unlearned out/hp --vectors out/locate/concept_vectors.json \\
      --output-dir out/audit
  hf-unlearn audit --original ./base --unlearned ./npo --vectors 10:513,11:98 --layers all
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("audit", help="audit concept vectors: original vs unlearned", description=EXAMPLES)
    add_model_options(parser, "--original", "the model before unlearning (folder, Hub id or 'smollm2')")
    add_model_options(parser, "--unlearned", "the model after unlearning (folder or Hub id)")
    parser.add_argument("--vectors", required=True,
                        help="a ConceptVectors JSON file (from `hf-unlearn locate`) or LAYER:DIM,LAYER:DIM")
    parser.add_argument("--top-k", type=int, default=200, help="tokens of the Jaccard comparison (default: 200)")
    parser.add_argument("--layers", default="audited", help="audited, all, or layer indices like 3,4")
    parser.add_argument("--output-dir", default=".", help="where audit.json goes (default: .)")
    add_runtime_options(parser)
    parser.set_defaults(handler=run)


def parse_vectors(value: str):
    """A ConceptVectors file, or ``LAYER:DIM`` pairs separated by commas."""
    from ..concepts import load_concept_vectors

    path = Path(value).expanduser()
    if path.is_file():
        vectors = load_concept_vectors(path)
    elif ":" in value and not path.suffix:
        usage = f"--vectors {value!r}: use LAYER:DIM pairs separated by commas, e.g. 10:513,11:98"
        try:
            vectors = [tuple(int(x) for x in item.split(":")) for item in value.split(",") if item.strip()]
        except ValueError:
            raise CLIError(usage) from None
        if any(len(v) != 2 for v in vectors):
            raise CLIError(usage)
    else:
        raise CLIError(f"--vectors: no such file: {value}")
    if not vectors:
        raise CLIError(f"--vectors {value}: no concept vectors in it")
    return vectors


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from ..concepts import audit_concept_vectors

    vectors = parse_vectors(args.vectors)
    if args.layers in ("audited", "all"):
        layers = args.layers
    else:
        try:
            layers = [int(x) for x in args.layers.split(",") if x.strip()]
        except ValueError:
            raise CLIError(f"--layers {args.layers!r}: use audited, all or indices like 3,4") from None
    out = output_dir(args.output_dir)
    original, unlearned, tokenizer = load_model_pair(args)
    try:
        table = audit_concept_vectors(original, unlearned, vectors, top_k=args.top_k, tokenizer=tokenizer,
                                      layers=layers, progress=True)
    except IndexError as error:
        raise CLIError(f"--vectors/--layers: {error}") from None
    path = table.to_json(out / "audit.json")
    report(f"{table}\n\n{table.to_markdown()}", [path])
    return 0
