"""Hostile and careless inputs for the CLI table in test_trust.py: builders of bad files.

Every builder takes (good artifact, work folder, tiny model folder) and returns CLI arguments;
what it writes goes into the work folder, never into the model folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import onnx

from redcompile.artifact import KEY_MANIFEST, KEY_MANIFEST_SHA, KEY_TOKENIZER, manifest_json

CONVERT = ("--random-drafter",)


def model_copy(model: Path, work: Path, config=None, generation=None, tokenizer=None) -> Path:
    """A copy of `model` in `work` with config.json keys replaced (None deletes a key),
    a generation_config.json, or an edited tokenizer.json."""
    folder = work / "model"
    if not folder.exists():
        shutil.copytree(model, folder)
    if config is not None:
        data = json.loads((folder / "config.json").read_text())
        for key, value in config.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        (folder / "config.json").write_text(json.dumps(data))  # NaN written as NaN
    if generation is not None:
        (folder / "generation_config.json").write_text(json.dumps(generation))
    if tokenizer is not None:
        tokenizer(folder / "tokenizer.json")
    return folder


def bad_config(**edits):
    """convert a model whose config.json carries `edits`."""

    def build(g, t, m):
        return ["convert", model_copy(m, t, config=edits), t / "out.onnx", *CONVERT]

    return build


def config_text(data: bytes):
    """convert a model whose config.json holds `data`."""

    def build(g, t, m):
        folder = model_copy(m, t)
        (folder / "config.json").write_bytes(data)
        return ["convert", folder, t / "out.onnx", *CONVERT]

    return build


def bad_weight(kind: str):
    """convert a model one of whose weights is NaN or integer."""

    def build(g, t, m):
        import torch
        from safetensors.torch import load_file, save_file

        folder = model_copy(m, t)
        path = folder / "model.safetensors"
        tensors = load_file(str(path))
        name = sorted(n for n in tensors if n.endswith("o_proj.weight"))[0]
        if kind == "nan":
            tensors[name] = tensors[name].clone()
            tensors[name].view(-1)[7] = math.nan
        else:
            tensors[name] = tensors[name].to(torch.int32)
        save_file(tensors, str(path))
        return ["convert", folder, t / "out.onnx", *CONVERT]

    return build


def added_token_beyond_vocab(path: Path) -> None:
    """Give the tokenizer a token whose id lies past the model's vocabulary."""
    data = json.loads(path.read_text())
    data["added_tokens"].append(
        {
            "id": 5000,
            "content": "<far>",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
    )
    path.write_text(json.dumps(data))


def rewritten_artifact(edit_manifest=None, tokenizer=None, recompute=True, name="edited"):
    """generate from a copy of the good artifact whose manifest (or tokenizer) is edited and,
    with `recompute`, whose checksums are recomputed as a hostile writer would."""

    def build(g, t, m):
        model = onnx.load(str(g))
        props = {p.key: p for p in model.metadata_props}
        manifest = json.loads(props[KEY_MANIFEST].value)
        if tokenizer is not None:
            text = tokenizer(props[KEY_TOKENIZER].value)
            props[KEY_TOKENIZER].value = text
            if recompute:
                import hashlib

                manifest["tokenizer_sha256"] = hashlib.sha256(text.encode()).hexdigest()
        if edit_manifest is not None:
            manifest = edit_manifest(manifest)
        text = manifest if isinstance(manifest, str) else manifest_json(manifest)
        props[KEY_MANIFEST].value = text
        if recompute:
            import hashlib

            props[KEY_MANIFEST_SHA].value = hashlib.sha256(text.encode()).hexdigest()
        path = t / f"{name}.onnx"
        onnx.save(model, str(path))
        return ["generate", path, "--prompt", "x", "--max-new-tokens", "2"]

    return build


def edited(fn):
    """A manifest edit that mutates and returns the manifest."""

    def apply(manifest):
        fn(manifest)
        return manifest

    return apply


def relength(manifest):
    """Beam length 4 with the I/O contract of length 4: consistent, but not the graph's."""
    from redcompile.io_contract import step_signature

    manifest["beam"]["length"] = 4
    beams = manifest["beam"]["width"] + manifest["beam"].get("lookup_beams", 0)
    layers = manifest["model"]["num_layers"]
    lookup = manifest["beam"].get("lookup_beams", 0) > 0
    manifest["io"] = step_signature(layers, beams, 4, history=lookup).to_dict()
    return manifest


def linked_out(kind: str, target: str, out: str = "out.onnx"):
    """convert with OUT (or OUT.data) a hard or symbolic link to a model file."""

    def build(g, t, m):
        folder = model_copy(m, t)
        link = t / out
        if kind == "hard":
            os.link(folder / target, link)
        else:
            link.symlink_to(folder / target)
        return ["convert", folder, t / "out.onnx", *CONVERT]

    return build


def in_model(name: str, *extra: str):
    def build(g, t, m):
        folder = model_copy(m, t)
        return ["convert", folder, folder / name, "--target", "onnxruntime", *CONVERT, *extra]

    return build


def drafter_folder(m: Path, t: Path) -> Path:
    from redcompile.models.drafter_io import random_drafter, save_drafter
    from redcompile.models.loader import load_decoder

    return save_drafter(random_drafter(load_decoder(m).config), t / "drafter")


def text_file(name: str, data: bytes):
    def make(t: Path) -> Path:
        path = t / name
        path.write_bytes(data)
        return path

    return make


def prompts_rows():
    deep = b'{"prompt": ' + b"[" * 200_000 + b"]" * 200_000 + b"}\n"
    return [
        (
            "prompts file with a lone surrogate escape",
            lambda g, t, m: [
                "generate",
                g,
                "--prompts-file",
                text_file("p.jsonl", b'{"prompt": "\\ud800x"}\n')(t),
            ],
            "not valid UTF-8",
        ),
        (
            "prompts file of invalid UTF-8 bytes",
            lambda g, t, m: [
                "generate",
                g,
                "--prompts-file",
                text_file("p.jsonl", b'{"prompt": "\xff\xfe"}\n')(t),
            ],
            "not readable UTF-8",
        ),
        (
            "prompts file nesting JSON deeply",
            lambda g, t, m: ["generate", g, "--prompts-file", text_file("p.jsonl", deep)(t)],
            "nests JSON too deeply",
        ),
        (
            "prompts file that is a folder",
            lambda g, t, m: ["generate", g, "--prompts-file", t],
            "is a folder",
        ),
        (
            "prompt of undecodable bytes",
            lambda g, t, m: ["generate", g, "--prompt", "a\udcffb"],
            "not valid UTF-8",
        ),
        (
            "negative seed",
            lambda g, t, m: ["generate", g, "--prompt", "x", "--seed", "-1"],
            "--seed",
        ),
        (
            "seed above 2**63 - 1",
            lambda g, t, m: ["generate", g, "--prompt", "x", "--seed", str(2**63)],
            "--seed",
        ),
        (
            "prompt encoding past the vocabulary",
            lambda g, t, m: [
                "generate",
                model_copy(m, t, tokenizer=added_token_beyond_vocab),
                "--prompt",
                "<far>",
                "--max-new-tokens",
                "2",
            ],
            "outside the model's vocabulary",
        ),
    ]


def output_rows():
    return [
        ("convert: OUT is the model's config.json", in_model("config.json"), "lies inside"),
        ("convert: OUT inside the model folder", in_model("new.onnx"), "lies inside"),
        (
            "convert: OUT a hard link to the model's config",
            linked_out("hard", "config.json"),
            "same file as the input",
        ),
        (
            "convert: OUT a symbolic link to the weights",
            linked_out("sym", "model.safetensors"),
            "lies inside",
        ),
        (
            "convert: OUT.data a symbolic link to the weights",
            linked_out("sym", "model.safetensors", out="out.onnx.data"),
            "lies inside",
        ),
        (
            "convert: OUT inside the drafter folder",
            lambda g, t, m: [
                "convert",
                m,
                drafter_folder(m, t) / "x.onnx",
                "--drafter",
                t / "drafter",
            ],
            "lies inside",
        ),
        (
            "convert: --drafter names a file",
            lambda g, t, m: [
                "convert",
                m,
                t / "out.onnx",
                "--drafter",
                text_file("d.json", b"{}")(t),
            ],
            "is a file",
        ),
        (
            "convert: --dump-passes names a file",
            lambda g, t, m: [
                "convert",
                m,
                t / "out.onnx",
                *CONVERT,
                "--dump-passes",
                text_file("dump", b"x")(t),
            ],
            "is a file; name a folder",
        ),
        (
            "convert: --dump-passes inside the model folder",
            lambda g, t, m: [
                "convert",
                model_copy(m, t),
                t / "out.onnx",
                *CONVERT,
                "--dump-passes",
                t / "model" / "dump",
            ],
            "lies inside",
        ),
        (
            "convert: OUT on a file system that refuses writes",
            lambda g, t, m: ["convert", m, Path("/proc/out.onnx"), *CONVERT],
            "cannot write in /proc",
        ),
        (
            "convert: --target tensorrt without TensorRT",
            lambda g, t, m: ["convert", m, t / "out.onnx", *CONVERT, "--target", "tensorrt"],
            "trtexec",
        ),
        (
            "convert: an .engine OUT without TensorRT",
            lambda g, t, m: ["convert", m, t / "out.engine", *CONVERT],
            "trtexec",
        ),
        (
            "train-drafter: --out is the model folder",
            lambda g, t, m: [
                "train-drafter",
                model_copy(m, t),
                "--data",
                text_file("data.txt", b"hello world\n" * 20)(t),
                "--out",
                t / "model",
            ],
            "is the input",
        ),
        (
            "train-drafter: --out would overwrite a data file",
            lambda g, t, m: [
                "train-drafter",
                m,
                "--data",
                text_file("config.json", b"hello world\n" * 20)(t),
                "--out",
                t,
            ],
            "would overwrite the input",
        ),
        (
            "verify: --drafter names a file",
            lambda g, t, m: ["verify", g, m, "--drafter", text_file("d.json", b"{}")(t)],
            "is a file",
        ),
    ]


def config_rows():
    nan = math.nan
    rows = [
        ("hidden_size as a string", {"hidden_size": "128"}, "'hidden_size'"),
        ("negative head count", {"num_attention_heads": -4}, "'num_attention_heads'"),
        ("zero layers", {"num_hidden_layers": 0}, "'num_hidden_layers'"),
        ("fractional vocabulary", {"vocab_size": 3.5}, "'vocab_size'"),
        ("missing intermediate_size", {"intermediate_size": None}, "lacks 'intermediate_size'"),
        ("rms_norm_eps as text", {"rms_norm_eps": "tiny"}, "'rms_norm_eps'"),
        ("NaN rope_theta", {"rope_theta": nan}, "'rope_theta'"),
        ("negative max_position_embeddings", {"max_position_embeddings": -1}, "'max_position"),
        ("eos id past the vocabulary", {"eos_token_id": 99999}, "'eos_token_id'"),
        ("bos id as a string", {"bos_token_id": "<s>"}, "'bos_token_id'"),
        ("tie_word_embeddings as text", {"tie_word_embeddings": "yes"}, "'tie_word_embeddings'"),
        ("rope_scaling as a list", {"rope_scaling": [1, 2]}, "'rope_scaling'"),
        ("zero key/value heads", {"num_key_value_heads": 0}, "'num_key_value_heads'"),
        ("odd head_dim", {"head_dim": 7}, "must be even"),
        ("sliding_window as text", {"sliding_window": "big"}, "'sliding_window'"),
        (
            "rope factor as text",
            {"rope_scaling": {"rope_type": "linear", "factor": "2"}},
            "'factor'",
        ),
        ("infinite rms_norm_eps", {"rms_norm_eps": math.inf}, "'rms_norm_eps'"),
        ("activation as a number", {"hidden_act": 5}, "'hidden_act'"),
        ("architecture holding a newline", {"model_type": "llama\nrm -rf"}, "not supported"),
    ]
    table = [(f"config: {name}", bad_config(**edits), words) for name, edits, words in rows]
    table += [
        (
            "generation config: eos past the vocabulary",
            lambda g, t, m: [
                "convert",
                model_copy(m, t, generation={"eos_token_id": [1, 10**6]}),
                t / "out.onnx",
                *CONVERT,
            ],
            "'eos_token_id'",
        ),
        ("config: a JSON list", config_text(b"[1, 2]"), "must hold a JSON object"),
        ("config: not JSON", config_text(b"{'hidden_size': 1"), "is not valid JSON"),
        ("weights: a NaN", bad_weight("nan"), "NaN or infinite"),
        ("weights: an integer tensor", bad_weight("int"), "must be floating point"),
        (
            "convert: --max-seq-len past the model's positions",
            lambda g, t, m: ["convert", m, t / "out.onnx", *CONVERT, "--max-seq-len", "10000000"],
            "max_position_embeddings",
        ),
    ]
    return table


def artifact_rows():
    def garbage_tokenizer(_text):
        return "{not a tokenizer"

    return [
        (
            "artifact: edited tokenizer",
            rewritten_artifact(tokenizer=lambda text: text + " ", recompute=False),
            "tokenizer that does not match its checksum",
        ),
        (
            "artifact: garbage tokenizer with recomputed checksums",
            rewritten_artifact(tokenizer=garbage_tokenizer),
            "not a valid tokenizer.json",
        ),
        (
            "artifact: beam width as a string",
            rewritten_artifact(edited(lambda m: m["beam"].update(width="4"))),
            "'beam.width'",
        ),
        (
            "artifact: vocabulary as a string",
            rewritten_artifact(edited(lambda m: m["model"].update(vocab_size="97"))),
            "'model.vocab_size'",
        ),
        (
            "artifact: stop id past the vocabulary",
            rewritten_artifact(edited(lambda m: m.update(stop_token_ids=[10**6]))),
            "'stop_token_ids'",
        ),
        (
            "artifact: unknown mode",
            rewritten_artifact(edited(lambda m: m.update(mode="turbo"))),
            "'mode'",
        ),
        (
            "artifact: an input dropped from the I/O contract",
            rewritten_artifact(edited(lambda m: m["io"]["inputs"].pop(0))),
            "'io'",
        ),
        (
            "artifact: manifest without an I/O contract",
            rewritten_artifact(edited(lambda m: m.pop("io"))),
            "'io'",
        ),
        (
            "artifact: manifest a JSON list",
            rewritten_artifact(lambda m: "[1, 2, 3]"),
            "'manifest'",
        ),
        (
            "artifact: manifest nesting JSON deeply",
            rewritten_artifact(lambda m: "[" * 100_000 + "]" * 100_000),
            "unreadable manifest",
        ),
        (
            "artifact: beam length that is not the graph's",
            rewritten_artifact(relength),
            "differ from its manifest",
        ),
        (
            "artifact: a .pt2 name holding zip garbage",
            lambda g, t, m: [
                "generate",
                text_file("x.pt2", b"PK\x03\x04" + os.urandom(300))(t),
                "--prompt",
                "x",
            ],
            "not a PyTorch .pt2 package",
        ),
        (
            "artifact: a .pt2 name holding an empty zip",
            lambda g, t, m: ["inspect", _empty_zip(t / "e.pt2")],
            "not a redcompile artifact",
        ),
    ]


def _empty_zip(path: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/version", "1")
    return path


def hostile_rows():
    """The rows issue 28's classes add to the table."""
    return output_rows() + config_rows() + prompts_rows() + artifact_rows()
