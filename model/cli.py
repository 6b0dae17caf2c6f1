"""python -m model: inspect, validate and scale arch files (the CLI; model/__main__.py only runs it).

  python -m model info efficientpose_a                 params / MACs / FLOPs, backbone and head
  python -m model info efficientpose_a --family 3      the compound-scaling family phi = 0..3
  python -m model info model/archs/*.yaml --head mbv1  several archs, with the head swapped
  python -m model scale efficientpose_a --phi 2 -o runs/ep_a_phi2.yaml
  python -m model check my_arch.yaml                   validate (exit 2 with the file and field on error)
"""

from __future__ import annotations

import argparse

from posekit.cli import ArgumentParser, float_range, hxw, int_range, main_guard, output_file_text

from .arch import dump, load, shipped
from .scaling import ALPHA, BETA, GAMMA, compound_scale


def _row(name, arch, f) -> str:
    return (f"{name:<34} {arch.input_size[0]:>3}x{arch.input_size[1]:<4} {arch.head.type:<5} {len(arch.blocks):>3} "
            f"{f['params'] / 1e6:>7.3f} {f['params_backbone'] / 1e6:>7.3f} {f['params_head'] / 1e6:>7.3f} "
            f"{f['macs'] / 1e9:>7.3f} {f['macs_backbone'] / 1e9:>7.3f} {f['macs_head'] / 1e9:>7.3f} "
            f"{f['flops'] / 1e9:>7.3f}")


MAX_PHI = 8  # phi 8: 784x592 input, 25M params; phi 40 would take minutes to count and gigabytes to build
HEADER = (f"{'arch':<34} {'input':<8} {'head':<5} {'blk':>3} {'Mparam':>7} {'bb':>7} {'head':>7} "
          f"{'GMAC':>7} {'bb':>7} {'head':>7} {'GFLOP':>7}")


def cmd_info(args):
    from .flops import count_flops  # torch: not needed for --help

    archs = [load(name) for name in args.arch or list(shipped())]  # every arch checked before the table starts
    print(HEADER)
    for arch in archs:
        if args.head:
            arch = arch.replace(head=arch.head.replace(type=args.head))
        if args.input:
            arch = arch.replace(input_size=args.input)
        phis = range(args.family + 1) if args.family is not None else [0]
        for phi in phis:
            a = compound_scale(arch, phi)
            label = arch.name if phi == 0 else f"{arch.name} phi={phi}"
            f = count_flops(a)
            print(_row(label, a, f))
            if a.neck:  # the neck is inside neither bb nor head above
                n = a.neck
                print(f"{'  + neck ' + n.type:<34} levels {'-'.join(map(str, n.levels))} width {n.width} repeats "
                      f"{n.repeats}: {f['params_neck'] / 1e6:.3f} Mparam, {f['macs_neck'] / 1e9:.3f} GMAC")
    print("MACs: multiply-accumulates of conv/transposed-conv ops (torch.utils.flop_counter); FLOPs = 2 x MACs; "
          f"bb = backbone. Compound scaling alpha={ALPHA}, beta={BETA}, gamma={GAMMA}.")
    return 0


def cmd_scale(args):
    from .flops import count_flops

    arch = compound_scale(load(args.arch), args.phi)
    path = dump(arch, args.output, header=f"{arch.name}: compound-scaled from {args.arch} with phi={args.phi:g}")
    f = count_flops(arch)
    print(f"wrote {path}: {len(arch.blocks)} blocks, input {arch.input_size[0]}x{arch.input_size[1]}, "
          f"{f['params'] / 1e6:.3f}M params, {f['macs'] / 1e9:.3f} GMACs")
    return 0


def cmd_check(args):
    for name in args.arch:
        arch = load(name)
        print(f"{name}: ok ({arch.name}, {len(arch.blocks)} blocks, head {arch.head.type}, "
              f"output stride {arch.backbone_stride})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m model", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("info", help="params, MACs and FLOPs (backbone / head)")
    i.add_argument("arch", nargs="*", help="arch files or shipped names (default: all shipped)")
    i.add_argument("--family", type=int_range(0, MAX_PHI), metavar="PHI",
                   help="also print compound-scaled archs phi = 0..PHI")
    i.add_argument("--head", choices=["plain", "mbv1", "mbv2"], help="swap the head type")
    i.add_argument("--input", type=hxw, help="override the input size, HxW")
    i.set_defaults(fn=cmd_info)
    s = sub.add_parser("scale", help="write a compound-scaled arch file")
    s.add_argument("arch")
    s.add_argument("--phi", type=float_range(-MAX_PHI, MAX_PHI), required=True)
    s.add_argument("-o", "--output", required=True, type=output_file_text)
    s.set_defaults(fn=cmd_scale)
    c = sub.add_parser("check", help="validate arch files")
    c.add_argument("arch", nargs="+")
    c.set_defaults(fn=cmd_check)
    return p



@main_guard
def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.fn(args)
