"""``hf-unlearn locate``: find a concept's vectors (MLP value vectors) in a model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (
    CLIError,
    add_model_options,
    add_runtime_options,
    check_supported,
    load_model,
    load_questions,
    markdown_table,
    output_dir,
    parse_int_list,
    report,
    resolve_device,
    split_list,
)

EXAMPLES = """\
Ranks every (layer, dim) value vector by how specific it is to the concept (hf_unlearn.concepts.locate_concept_vectors)
and writes the top ones as a ConceptVectors JSON file, the input of `hf-unlearn audit` and of the needle method.

examples:
  hf-unlearn locate --model smollm2 --concept "Harry Potter" --questions hp.jsonl --text hp.txt --top-n 40 \\
      --output-dir out/locate
  hf-unlearn locate --model ./my-model --concept Paris --questions paris.txt --scorer vocab,attribution

--questions: a .txt file (one question per line) or rows with 'question' and optionally 'answer' columns (without
answers the model's own greedy answers are used). --background: unrelated questions in the same format (default:
the built-in general-knowledge pool minus the concept).
"""

SCORERS = ("attribution", "vocab")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("locate", help="find a concept's vectors in a model", description=EXAMPLES)
    add_model_options(parser)
    parser.add_argument("--concept", required=True, help="name of the concept")
    parser.add_argument("--questions", required=True, help="questions (and answers) about the concept")
    parser.add_argument("--text", help="a text file about the concept (a paragraph or more)")
    parser.add_argument("--background", help="unrelated questions (and answers); default: built-in pool")
    parser.add_argument("--scorer", default="attribution", help="attribution, vocab or vocab,attribution")
    parser.add_argument("--top-n", default="auto",
                        help="vectors to keep, or auto (default): the largest of 10/20/40/80 that hurts the concept's "
                             "answers and spares the background's (hf_unlearn.concepts.set_size)")
    parser.add_argument("--layers", help="layers to search, e.g. 10,11,12 (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="length of generated answers (default: 32)")
    parser.add_argument("--output-dir", default=".", help="where concept_vectors.json goes (default: .)")
    add_runtime_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    import torch

    from ..concepts import locate_concept_vectors, save_concept_vectors
    from ..concepts.projection import project_to_vocab, value_vector
    from ..evaluation import answer_questions
    from ..general_knowledge import general_knowledge

    if args.top_n != "auto":
        if not str(args.top_n).isdigit() or int(args.top_n) < 1:
            raise CLIError(f"--top-n must be 'auto' or a number >= 1, got {args.top_n!r}")
        args.top_n = int(args.top_n)
    scorers = split_list(args.scorer, "--scorer", SCORERS)
    layers = parse_int_list(args.layers, "--layers")
    questions, answers = load_questions(args.questions)
    text = None
    if args.text:
        path = Path(args.text)
        if not path.is_file():
            raise CLIError(f"--text: no such file: {args.text}")
        text = path.read_text(encoding="utf-8")
    if args.background:
        background_q, background_a = load_questions(args.background, "--background")
    else:
        pool = general_knowledge(exclude=args.concept)
        background_q, background_a = [q for q, _ in pool], [" " + a for _, a in pool]
    out = output_dir(args.output_dir)

    model, tokenizer = load_model(args.model, args.dtype, resolve_device(args.device))
    check_supported(model, args.model)
    if answers is None:
        answers = answer_questions(model, tokenizer, questions, max_new_tokens=args.max_new_tokens, progress=True)
    if background_a is None:
        background_a = answer_questions(model, tokenizer, background_q, max_new_tokens=args.max_new_tokens)
    vectors = locate_concept_vectors(
        model, tokenizer, args.concept, questions=questions, answers=answers, text=text,
        background_questions=background_q, background_answers=background_a,
        scorer=scorers[0] if len(scorers) == 1 else scorers, layers=layers, top_n=args.top_n,
    )
    path = out / "concept_vectors.json"
    save_concept_vectors(vectors, path)

    rows = []
    with torch.no_grad():
        for rank, vector in enumerate(vectors, 1):
            ids, _ = project_to_vocab(model, value_vector(model, vector.layer, vector.dim), top_k=5)
            tokens = [tokenizer.decode([i]).strip() for i in ids.tolist()]
            rows.append({"rank": rank, "layer": vector.layer, "dim": vector.dim,
                         "score": vector.scores.get("score"), "top tokens": ", ".join(tokens)})
    table = f"{len(vectors)} concept vectors of {args.concept!r} in {args.model}\n\n"
    report(table + markdown_table(rows, ["rank", "layer", "dim", "score", "top tokens"]), [path])
    return 0
