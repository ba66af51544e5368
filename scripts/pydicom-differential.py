#!/usr/bin/env python3
"""Compares the daemon's DICOM JSON with pydicom's (an independent implementation),
attribute by attribute, at every level of sequences.

    pydicom-differential.py corpus OUT_DIR   copies pydicom's own test files into OUT_DIR
    pydicom-differential.py compare DIR      compares each DIR/X.json (the daemon's object
                                             for DIR/X.dcm) with pydicom's to_json_dict

Run it with a Python that has pydicom (scripts/dev-venv.sh pydicom==3.0.2 makes one).
`compare` prints one line per difference and exits 1 when there is any that KNOWN does
not list. Compared: the set of attributes, each VR, text values after decoding (PN group
by group), numbers as numbers, sequence items, and inline binary values byte for byte.
Not differences, by design (README, "Series documents"):
- group lengths (gggg,0000) and Data Set Trailing Padding are not written;
- pixel data is a BulkDataURI or left out, never inline, and a BulkDataURI stands for any
  value (binary values over the inline limit are left out: run the daemon's side with a
  limit above the corpus' largest value);
- an IS or DS that the daemon keeps as text (not a number, or an integer beyond 2^53) is
  compared as the number it reads as;
- an empty value inside a multi-value is null (pydicom: ""), and a person name of only
  separators (`^^^^`) is empty;
- a private attribute in an implicit VR file is UN with its bytes inline: pydicom's private
  dictionary knows some of their VRs, the daemon has none.
"""

import base64
import json
import math
import pathlib
import shutil
import sys

import pydicom
from pydicom.uid import generate_uid

# Test files of pydicom's wheel (pydicom/data/test_files) that are Part-10 files: implicit
# and explicit VR, big endian, sequences, private sequences, SR, RT, waveforms, palettes,
# encapsulated pixel data.
TEST_FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "JPEG2000.dcm",
    "empty_charset_LEI.dcm",
    "nested_priv_SQ.dcm",
    "priv_SQ.dcm",
    "reportsi.dcm",
    "rtdose.dcm",
    "rtplan.dcm",
    "test-SR.dcm",
    "waveform_ecg.dcm",
    "examples_palette.dcm",
    "ExplVR_BigEnd.dcm",
    "SC_rgb_small_odd_big_endian.dcm",
]
# Differences that pydicom makes, by file and attribute, with the reason.
KNOWN = {
    ("crafted_iso2022_ir58.dcm", "00100010[0]"): "pydicom 3.0.2 keeps the escape sequences "
    "of GB 2312 (ISO 2022 IR 58, PS3.5 K.2) in the decoded text",
}
NUMBER_VRS = {"IS", "DS", "FL", "FD", "US", "SS", "UL", "SL", "SV", "UV"}
PIXEL_DATA = {"7FE00008", "7FE00009", "7FE00010"}
PADDING = "FFFCFFFC"


def corpus(out):
    """Copies pydicom's character set files and TEST_FILES into `out`; a file without a
    SOP Instance UID (which the daemon needs) is saved with one added."""
    data = pathlib.Path(pydicom.__file__).parent / "data"
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted((data / "charset_files").glob("*.dcm"))
    sources += [data / "test_files" / name for name in TEST_FILES]
    for source in sources:
        target = out / source.name
        ds = pydicom.dcmread(source)
        if "SOPInstanceUID" in ds:
            shutil.copyfile(source, target)
        else:
            ds.SOPInstanceUID = generate_uid()
            ds.save_as(target)
        print(f"corpus: {source.name}")


def number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def same_number(ours, theirs):
    ours, theirs = number(ours), number(theirs)
    if isinstance(ours, float) and isinstance(theirs, float):
        if math.isnan(ours) or math.isnan(theirs):
            return math.isnan(ours) and math.isnan(theirs)
        return math.isclose(ours, theirs, rel_tol=1e-6, abs_tol=1e-12)
    return ours == theirs


def person_name(value):
    if not isinstance(value, dict):
        return value
    groups = {k: v for k, v in value.items() if v and v.strip("^ ")}
    return groups or None


def text(value):
    return (value.rstrip(" \0") or None) if isinstance(value, str) else value


def values_of(attribute):
    values = attribute.get("Value", [])
    if attribute.get("vr") == "PN" and len(values) == 1 and person_name(values[0]) is None:
        return []
    return values


def compare_values(where, vr, ours, theirs, differences):
    if len(ours) != len(theirs):
        differences.append(f"{where}: {len(ours)} values, pydicom {len(theirs)}: {ours!r} / {theirs!r}")
        return
    for i, (a, b) in enumerate(zip(ours, theirs)):
        at = f"{where}[{i}]"
        if vr == "SQ":
            compare_objects(at, a, b, differences)
        elif vr == "PN":
            if person_name(a) != person_name(b):
                differences.append(f"{at}: {a!r}, pydicom {b!r}")
        elif vr in NUMBER_VRS:
            if not same_number(a, b):
                differences.append(f"{at}: {a!r}, pydicom {b!r}")
        elif vr == "AT":
            if str(a).upper() != str(b).upper():
                differences.append(f"{at}: {a!r}, pydicom {b!r}")
        elif text(a) != text(b):
            differences.append(f"{at}: {a!r}, pydicom {b!r}")


def compare_objects(where, ours, theirs, differences):
    for tag in sorted(set(ours) | set(theirs)):
        at = f"{where}/{tag}" if where else tag
        if tag.endswith("0000") or tag == PADDING:
            if tag in ours:
                differences.append(f"{at}: written, but never should be")
            continue
        if tag not in ours:
            if tag not in PIXEL_DATA:
                differences.append(f"{at}: missing (pydicom: {json.dumps(theirs[tag])[:120]})")
            continue
        if tag not in theirs:
            differences.append(f"{at}: not in pydicom's (ours: {json.dumps(ours[tag])[:120]})")
            continue
        a, b = ours[tag], theirs[tag]
        if "BulkDataURI" in a or tag in PIXEL_DATA:
            continue
        vr_a, vr_b = a.get("vr"), b.get("vr")
        if vr_a == "UN" and int(tag[:4], 16) % 2 == 1:
            continue
        if vr_a != vr_b:
            differences.append(f"{at}: vr {vr_a}, pydicom {vr_b}")
            continue
        if "InlineBinary" in a or "InlineBinary" in b:
            ours_bytes = base64.b64decode(a.get("InlineBinary", ""))
            theirs_bytes = base64.b64decode(b.get("InlineBinary", ""))
            if ours_bytes != theirs_bytes:
                differences.append(f"{at}: {len(ours_bytes)} inline bytes differ from pydicom's {len(theirs_bytes)}")
            continue
        compare_values(at, vr_a, values_of(a), values_of(b), differences)


def compare(folder):
    folder = pathlib.Path(folder)
    files = sorted(folder.glob("*.dcm"))
    if not files:
        sys.exit(f"pydicom-differential: no .dcm files in {folder}")
    differences = []
    for dcm in files:
        ours_path = dcm.with_suffix(".json")
        if not ours_path.exists():
            differences.append((dcm.name, f"no {ours_path.name} (the daemon refused it)"))
            continue
        ours = json.loads(ours_path.read_text(encoding="utf-8"))
        # Every binary value inline, however large: BulkDataURIs are the daemon's choice.
        theirs = pydicom.dcmread(dcm).to_json_dict(bulk_data_threshold=1 << 40)
        found = []
        compare_objects("", ours, theirs, found)
        differences += [(dcm.name, d) for d in found]
        print(f"{dcm.name}: {len(ours)} attributes, {len(found)} differences")
    unexpected = 0
    for name, line in differences:
        reason = KNOWN.get((name, line.split(":")[0]))
        if reason:
            print(f"KNOWN {name}: {line} ({reason})")
        else:
            unexpected += 1
            print(f"DIFFERENCE {name}: {line}")
    print(
        f"pydicom {pydicom.__version__}: {len(files)} files, "
        f"{unexpected} differences ({len(differences) - unexpected} known)"
    )
    sys.exit(1 if unexpected else 0)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("corpus", "compare"):
        sys.exit(__doc__)
    {"corpus": corpus, "compare": compare}[sys.argv[1]](sys.argv[2])


if __name__ == "__main__":
    main()
