//! The converter against pydicom, an independent implementation: every file of a corpus
//! (pydicom's own character set and test files, and files crafted here for character
//! sets, undefined-length UN, large binaries and big DS integers) converted by
//! `read_instance` and compared attribute by attribute with pydicom's `to_json_dict`, by
//! `scripts/pydicom-differential.py` in `.dev/venv` (made by `scripts/dev-venv.sh`). The
//! `.dcm` files of the folder `DCW_DIFFERENTIAL_DIR` names, when set, join the corpus.

use std::path::{Path, PathBuf};
use std::process::Command;

use dicom_cache_warmer::{DocumentOptions, read_instance};
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

const PYDICOM: &str = "pydicom==3.0.2";
const STUDY: &str = "1.2.826.0.1.3680043.8.498.1";
const SERIES: &str = "1.2.826.0.1.3680043.8.498.1.1";
const SOP: &str = "1.2.826.0.1.3680043.8.498.1.1.1";
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);

#[test]
fn converter_agrees_with_pydicom_on_its_test_files_and_crafted_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = dev_python(root);
    let corpus = tempfile::tempdir().expect("temp dir");
    run(
        Command::new(&python)
            .arg(root.join("scripts/pydicom-differential.py"))
            .arg("corpus")
            .arg(corpus.path()),
        "copy pydicom's test files",
    );
    write_crafted_files(corpus.path());
    if let Some(site) = std::env::var_os("DCW_DIFFERENTIAL_DIR") {
        copy_site_files(Path::new(&site), corpus.path());
    }
    // Every binary value inline (the largest, in pydicom's ECG waveform file of 291 KB, is under 1 MiB), so that
    // each is compared byte for byte.
    let options = DocumentOptions {
        inline_binary_max_bytes: 1 << 20,
        ..DocumentOptions::default()
    };
    for dcm in dcm_files(corpus.path()) {
        let instance = read_instance(&dcm, STUDY, SERIES, &options)
            .unwrap_or_else(|e| panic!("{}: {e:?}", dcm.display()));
        std::fs::write(dcm.with_extension("json"), instance.as_bytes()).expect("write JSON");
    }
    let report = run(
        Command::new(&python)
            .arg(root.join("scripts/pydicom-differential.py"))
            .arg("compare")
            .arg(corpus.path()),
        "compare with pydicom",
    );
    println!("{report}");
    assert!(report.contains(" 0 differences"), "{report}");
}

/// The environment's python, with pydicom installed (from PyPI the first time).
fn dev_python(root: &Path) -> PathBuf {
    let output = Command::new("bash")
        .arg(root.join("scripts/dev-venv.sh"))
        .arg(PYDICOM)
        .output()
        .expect("run scripts/dev-venv.sh");
    assert!(
        output.status.success(),
        "the differential test needs {PYDICOM} in .dev/venv, and scripts/dev-venv.sh could not \
         install it (pip fetches it from PyPI the first time): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// Runs `command`, failing the test with its output unless it succeeds; returns stdout.
fn run(command: &mut Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Copies a site's own `.dcm` files into the corpus, named `site_…`.
fn copy_site_files(site: &Path, corpus: &Path) {
    let entries = std::fs::read_dir(site)
        .unwrap_or_else(|e| panic!("DCW_DIFFERENTIAL_DIR={}: {e}", site.display()));
    for path in entries.map(|entry| entry.expect("site entry").path()) {
        if path.extension().is_some_and(|e| e == "dcm")
            && let Some(name) = path.file_name()
        {
            let target = corpus.join(format!("site_{}", name.to_string_lossy()));
            std::fs::copy(&path, target).expect("copy a site file");
        }
    }
}

fn dcm_files(folder: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .expect("read corpus")
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    assert!(files.len() > 20, "a corpus of {} files", files.len());
    files
}

/// Files for what pydicom's own files do not hold.
fn write_crafted_files(folder: &Path) {
    let utf8 = [(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192")];
    let write = |name: &str, bytes: Vec<u8>| {
        std::fs::write(folder.join(name), bytes).expect("write crafted file");
    };
    // Latin-1 bytes labelled UTF-8, in multi-valued LO and PN.
    write(
        "crafted_utf8_latin1_bytes.dcm",
        explicit_le(
            &utf8,
            &[
                element(tags::INSTITUTION_NAME, b"LO", b"M\xFCller\\Zo\xC3\xAB "),
                element(tags::PATIENT_NAME, b"PN", b"M\xFCller^Hans\\Doe "),
            ],
        ),
    );
    // An item's own character set, and its own Pixel Representation.
    write(
        "crafted_item_scope.dcm",
        explicit_le(
            &utf8,
            &[
                undefined(tags::REFERENCED_IMAGE_SEQUENCE, Some(b"SQ")),
                undefined(ITEM, None),
                element(tags::SPECIFIC_CHARACTER_SET, b"CS", b"ISO_IR 100"),
                element(tags::PATIENT_NAME, b"PN", b"J\xe9r\xf4me "),
                element(tags::PIXEL_REPRESENTATION, b"US", &1_u16.to_le_bytes()),
                element(
                    tags::SMALLEST_IMAGE_PIXEL_VALUE,
                    b"SS",
                    &0xFFFF_u16.to_le_bytes(),
                ),
                undefined(ITEM_END, None),
                undefined(SEQUENCE_END, None),
                element(tags::PATIENT_NAME, b"PN", "Müller ".as_bytes()),
                element(
                    tags::SMALLEST_IMAGE_PIXEL_VALUE,
                    b"US",
                    &0xFFFF_u16.to_le_bytes(),
                ),
            ],
        ),
    );
    // JIS X 0212 (ISO 2022 IR 159) and GB 2312 (ISO 2022 IR 58) after their escapes.
    write(
        "crafted_iso2022_ir159.dcm",
        explicit_le(
            &[(tags::SPECIFIC_CHARACTER_SET, VR::CS, "\\ISO 2022 IR 159")],
            &[element(
                tags::PATIENT_NAME,
                b"PN",
                b"Abc=\x1b$(D\x30\x21\x1b(B",
            )],
        ),
    );
    write(
        "crafted_iso2022_ir58.dcm",
        explicit_le(
            &[(tags::SPECIFIC_CHARACTER_SET, VR::CS, "\\ISO 2022 IR 58")],
            &[element(
                tags::PATIENT_NAME,
                b"PN",
                b"Wang^XiaoDong=\x1b$)A\xcd\xf5^\x1b$)A\xd0\xa1\xb6\xab",
            )],
        ),
    );
    // pydicom's UN_sequence.dcm, with a SOP Instance UID.
    write("crafted_un_sequence.dcm", explicit_le(&[], &un_sequence()));
    // A binary value over the old 1 KiB limit, and a DS integer beyond 2^53.
    write(
        "crafted_binary_and_big_ds.dcm",
        explicit_le(
            &[],
            &[
                element(tags::SLICE_LOCATION, b"DS", b"9007199254740993"),
                element(Tag(0x0029, 0x0010), b"LO", b"ACME"),
                element(Tag(0x0029, 0x1010), b"OB", &[7; 2000]),
            ],
        ),
    );
}

/// A private undefined-length UN whose value is an implicit VR little endian sequence.
fn un_sequence() -> Vec<Vec<u8>> {
    let implicit = |tag: Tag, value: &[u8]| {
        let mut bytes = tag_bytes(tag);
        bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
        bytes.extend_from_slice(value);
        bytes
    };
    vec![
        element(Tag(0x4453, 0x0010), b"LO", b"ACME"),
        undefined(Tag(0x4453, 0x100C), Some(b"UN")),
        undefined(ITEM, None),
        undefined(tags::REFERENCED_SERIES_SEQUENCE, None),
        undefined(ITEM, None),
        implicit(
            tags::REFERENCED_SOP_CLASS_UID,
            b"1.2.840.10008.5.1.4.1.1.2\0",
        ),
        implicit(tags::REFERENCED_SOP_INSTANCE_UID, b"1.2.3\0"),
        undefined(ITEM_END, None),
        undefined(SEQUENCE_END, None),
        implicit(tags::STUDY_INSTANCE_UID, b"1.2.3.4\0"),
        undefined(ITEM_END, None),
        undefined(SEQUENCE_END, None),
    ]
}

/// Part-10 bytes in explicit VR little endian: the SOP Instance UID and `text` attributes,
/// then `more` elements (whose tags must follow).
fn explicit_le(text: &[(Tag, VR, &str)], more: &[Vec<u8>]) -> Vec<u8> {
    let mut obj = InMemDicomObject::from_element_iter(
        text.iter()
            .map(|&(tag, vr, value)| DataElement::new(tag, vr, PrimitiveValue::from(value))),
    );
    obj.put(DataElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(SOP),
    ));
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(uids::SECONDARY_CAPTURE_IMAGE_STORAGE)
        .media_storage_sop_instance_uid(SOP)
        .build()
        .expect("file meta");
    let mut bytes = Vec::new();
    obj.with_exact_meta(meta)
        .write_all(&mut bytes)
        .expect("write Part 10");
    for element in more {
        bytes.extend_from_slice(element);
    }
    bytes
}

/// An explicit VR little endian element.
fn element(tag: Tag, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut bytes = tag_bytes(tag);
    bytes.extend_from_slice(vr);
    if matches!(vr, b"OB" | b"UN" | b"SQ" | b"UT") {
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else {
        bytes.extend_from_slice(&(value.len() as u16).to_le_bytes());
    }
    bytes.extend_from_slice(value);
    bytes
}

/// The header of an undefined-length sequence (explicit `vr`, or none in implicit VR), item
/// or delimiter.
fn undefined(tag: Tag, vr: Option<&[u8; 2]>) -> Vec<u8> {
    let mut bytes = tag_bytes(tag);
    if let Some(vr) = vr {
        bytes.extend_from_slice(vr);
        bytes.extend_from_slice(&[0, 0]);
    }
    let delimiter = tag == ITEM_END || tag == SEQUENCE_END;
    bytes.extend_from_slice(&if delimiter { 0 } else { u32::MAX }.to_le_bytes());
    bytes
}

fn tag_bytes(tag: Tag) -> Vec<u8> {
    [tag.group().to_le_bytes(), tag.element().to_le_bytes()].concat()
}
