"""Export a checkpoint's forecast as an ONNX file or a torch.export program (.pt2): convlstm.export.

    convlstm export --checkpoint runs/x/checkpoints/best.pt --format onnx --out model.onnx
    convlstm export --checkpoint runs/x/checkpoints/best.pt --format pt2 --out model.pt2 --n_out 20

n_in and n_out are fixed at export (n_out the checkpoint's unless --n_out), the batch is dynamic, frames are the
training size. Bad input ends with one line "export: error: ..." and writes nothing: exit 2 for a bad flag value, 1
for a file that cannot be read or written (an --out that exists: pass --overwrite).
"""
from __future__ import annotations

import argparse
import os
import sys

from convlstm.atomic import WriteError, check_writable_dir
from convlstm.checkpoint import CheckpointError
from convlstm.export import FORMATS, export_model
from convlstm.load import load_model
from convlstm.models import named_class
from convlstm.runtime import EXIT_BAD_FLAG, EXIT_ERROR, add_loading_flags


class ExportError(Exception):
    """One line, and the exit code it ends with."""

    def __init__(self, message, code=EXIT_ERROR):
        super().__init__(message)
        self.code = code


def build_parser():
    p = argparse.ArgumentParser(prog="convlstm export", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--checkpoint", required=True, help="any checkpoint load_model reads (train.py's, a state_dict, ...)")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx (ONNX Runtime, ...) or pt2 (torch.export)")
    p.add_argument("--out", required=True, help="the file to write")
    p.add_argument("--n_out", type=int, default=None, help="frames the exported model predicts (default: the "
                                                            "checkpoint's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_loading_flags(p)
    return p


def run(args) -> None:
    if args.n_out is not None and not 1 <= args.n_out <= 10_000:
        raise ExportError(f"--n_out {args.n_out}: must be in [1, 10000]", EXIT_BAD_FLAG)
    if not args.out:
        raise ExportError("--out '': must name a file", EXIT_BAD_FLAG)
    if os.path.isdir(args.out):
        raise ExportError(f"--out {args.out} is a directory; name the file to write")
    if os.path.lexists(args.out) and not args.overwrite:
        raise ExportError(f"--out {args.out} exists; pass --overwrite to replace it or choose another name")
    try:
        check_writable_dir(os.path.dirname(os.path.abspath(args.out)), "--out")  # before the export's minutes
        model = load_model(args.checkpoint, backend="torch", channels=args.openstl_channels,
                           cell_output=args.cell_output, model_class=named_class(args.model))
        export_model(model, args.out, args.format, args.n_out)
    except (CheckpointError, WriteError) as error:
        raise ExportError(str(error)) from None
    except ImportError as error:  # ONNX's exporter needs onnx and onnxscript
        raise ExportError(f"--format {args.format} needs {error.name or 'onnx'}: pip install 'convlstm[export]'") \
            from None
    except ValueError as error:  # a --model that cannot be used
        raise ExportError(str(error), EXIT_BAD_FLAG) from None
    info = model.info
    print(f"{args.out}: {info.model} model, {info.n_in} frames in, {args.n_out or info.n_out} out, "
          f"{info.in_chan}x{'x'.join(map(str, info.frame_size or (64, 64)))} frames, any batch ({args.format})")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except ExportError as error:
        print(f"export: error: {error}", file=sys.stderr)
        return error.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
