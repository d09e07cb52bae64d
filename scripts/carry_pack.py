"""Move a folder larger than one device call's 64 MiB carry limit in parts.

    python scripts/carry_pack.py pack FOLDER OUTDIR PART_MB   # xz-compressed tar, split into OUTDIR/part-00, -01, ...
    python scripts/carry_pack.py unpack OUTDIR DEST           # joins the parts and extracts FOLDER under DEST

Each part travels in its own `run` call (carry: [OUTDIR/part-NN]); a warm device machine keeps the
earlier parts, so the last call can unpack them all.
"""
import io
import lzma
import sys
import tarfile
from pathlib import Path

cmd = sys.argv[1]
if cmd == "pack":
    src, out, mb = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.add(src, arcname=src.name)
    data = lzma.compress(buf.getvalue(), preset=6)
    out.mkdir(parents=True, exist_ok=True)
    step = mb * 1024 * 1024
    for i in range(0, len(data), step):
        d = out / f"part-{i // step:02d}"
        d.mkdir(exist_ok=True)
        (d / "blob").write_bytes(data[i:i + step])
    print(f"{len(buf.getvalue()) / 1e6:.1f} MB -> {len(data) / 1e6:.1f} MB xz in {-(-len(data) // step)} parts")
elif cmd == "unpack":
    out, dest = Path(sys.argv[2]), Path(sys.argv[3])
    data = b"".join((p / "blob").read_bytes() for p in sorted(out.glob("part-*")))
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(data)), mode="r") as t:
        t.extractall(dest)
    print(f"unpacked {len(data) / 1e6:.1f} MB into {dest}")
