//! Test and benchmark fixtures: real Part-10 CT-like instance files written with dicom-object.

use std::path::Path;

use dicom_core::value::{C, DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

/// Patient name with all three PN component groups (alphabetic, ideographic, phonetic).
pub const PATIENT_NAME: &str = "Yamada^Tarou=山田^太郎=やまだ^たろう";

/// Rows and Columns of the fixture image.
pub const IMAGE_SIZE: u16 = 64;

/// Private creator of the fixture's private block (0009,10xx).
pub const PRIVATE_CREATOR: &str = "ACME 1.1";

/// A short private OB value, below the inline limit.
pub const PRIVATE_SHORT_OB_TAG: Tag = Tag(0x0009, 0x1001);

/// The bytes of [`PRIVATE_SHORT_OB_TAG`].
pub const PRIVATE_SHORT_OB: [u8; 4] = [1, 2, 3, 4];

/// A long private OB value, above the inline limit.
pub const PRIVATE_LONG_OB_TAG: Tag = Tag(0x0009, 0x1002);

/// The length of [`PRIVATE_LONG_OB_TAG`]'s value in bytes.
pub const PRIVATE_LONG_OB_LEN: usize = 4096;

/// What varies between fixture instances.
#[derive(Debug, Clone, Copy)]
pub struct CtInstance<'a> {
    /// Study Instance UID (0020,000D).
    pub study_uid: &'a str,
    /// Series Instance UID (0020,000E).
    pub series_uid: &'a str,
    /// SOP Instance UID (0008,0018).
    pub sop_uid: &'a str,
    /// Instance Number (0020,0013), left out when `None`.
    pub instance_number: Option<i32>,
    /// Patient Name (0010,0010), in DICOM PN text form.
    pub patient_name: &'a str,
}

/// Why a fixture could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The file meta group could not be built.
    #[error("could not build the file meta group")]
    Meta(#[source] Box<dicom_object::WithMetaError>),
    /// The file could not be written.
    #[error("could not write the fixture file")]
    Write(#[source] Box<dicom_object::WriteError>),
}

/// Writes a Part-10 file (Explicit VR Little Endian) holding a 64x64 16-bit CT-like image.
pub fn write_ct_instance(path: &Path, ct: &CtInstance<'_>) -> Result<(), FixtureError> {
    let file = ct_dataset(ct)
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .map_err(|e| FixtureError::Meta(Box::new(e)))?;
    file.write_to_file(path)
        .map_err(|e| FixtureError::Write(Box::new(e)))
}

/// The data set [`write_ct_instance`] writes, pixel data included.
pub fn ct_dataset(ct: &CtInstance<'_>) -> InMemDicomObject {
    let z = -1149.5 + 0.625 * f64::from(ct.instance_number.unwrap_or(0));
    let referenced_image = InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            text(uids::CT_IMAGE_STORAGE),
        ),
        DataElement::new(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            text("1.2.3.4.5.6.7"),
        ),
    ]);
    let pixels: Vec<u16> = (0..u32::from(IMAGE_SIZE) * u32::from(IMAGE_SIZE))
        .map(|i| (i % 4096) as u16)
        .collect();
    let long_private: Vec<u8> = (0..PRIVATE_LONG_OB_LEN).map(|i| (i % 251) as u8).collect();

    let mut elements = vec![
        DataElement::new(tags::SPECIFIC_CHARACTER_SET, VR::CS, text("ISO_IR 192")),
        DataElement::new(
            tags::IMAGE_TYPE,
            VR::CS,
            PrimitiveValue::Strs(C::from_vec(vec![
                "ORIGINAL".to_owned(),
                "PRIMARY".to_owned(),
                "AXIAL".to_owned(),
            ])),
        ),
        DataElement::new(tags::SOP_CLASS_UID, VR::UI, text(uids::CT_IMAGE_STORAGE)),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, text(ct.sop_uid)),
        DataElement::new(tags::STUDY_DATE, VR::DA, text("20250807")),
        DataElement::new(tags::STUDY_TIME, VR::TM, text("094022.123456")),
        DataElement::new(tags::MODALITY, VR::CS, text("CT")),
        DataElement::new(
            tags::REFERRING_PHYSICIAN_NAME,
            VR::PN,
            PrimitiveValue::Empty,
        ),
        DataElement::new(tags::STUDY_DESCRIPTION, VR::LO, PrimitiveValue::Empty),
        DataElement::new(
            tags::REFERENCED_STUDY_SEQUENCE,
            VR::SQ,
            DataSetSequence::<InMemDicomObject>::empty(),
        ),
        DataElement::new(
            tags::REFERENCED_IMAGE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![referenced_image]),
        ),
        DataElement::new(Tag(0x0009, 0x0010), VR::LO, text(PRIVATE_CREATOR)),
        DataElement::new(
            PRIVATE_SHORT_OB_TAG,
            VR::OB,
            PrimitiveValue::U8(C::from_slice(&PRIVATE_SHORT_OB)),
        ),
        DataElement::new(
            PRIVATE_LONG_OB_TAG,
            VR::OB,
            PrimitiveValue::U8(C::from_vec(long_private)),
        ),
        DataElement::new(tags::PATIENT_NAME, VR::PN, text(ct.patient_name)),
        DataElement::new(tags::PATIENT_ID, VR::LO, text("PID-0001")),
        DataElement::new(tags::PATIENT_SEX, VR::CS, text("F")),
        DataElement::new(tags::SLICE_THICKNESS, VR::DS, text("0.625")),
        DataElement::new(
            tags::SINGLE_COLLIMATION_WIDTH,
            VR::FD,
            PrimitiveValue::from(0.625_f64),
        ),
        DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, text(ct.study_uid)),
        DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, text(ct.series_uid)),
        DataElement::new(tags::SERIES_NUMBER, VR::IS, text("6")),
        DataElement::new(
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            text(&format!("-250\\-250\\{z}")),
        ),
        DataElement::new(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            text("1\\0\\0\\0\\1\\0"),
        ),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1_u16)),
        DataElement::new(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            text("MONOCHROME2"),
        ),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(IMAGE_SIZE)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(IMAGE_SIZE)),
        DataElement::new(tags::PIXEL_SPACING, VR::DS, text("0.976562\\0.976562")),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16_u16)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(12_u16)),
        DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11_u16)),
        DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(1_u16),
        ),
        DataElement::new(
            tags::SMALLEST_IMAGE_PIXEL_VALUE,
            VR::SS,
            PrimitiveValue::from(-1024_i16),
        ),
        DataElement::new(tags::WINDOW_CENTER, VR::DS, text("40\\400")),
        DataElement::new(tags::WINDOW_WIDTH, VR::DS, text("400\\1500")),
        DataElement::new(tags::RESCALE_INTERCEPT, VR::DS, text(" -1024")),
        DataElement::new(tags::RESCALE_SLOPE, VR::DS, text("1")),
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(C::from_vec(pixels)),
        ),
    ];
    if let Some(number) = ct.instance_number {
        elements.push(DataElement::new(
            tags::INSTANCE_NUMBER,
            VR::IS,
            text(&number.to_string()),
        ));
    }
    InMemDicomObject::from_element_iter(elements)
}

fn text(value: &str) -> PrimitiveValue {
    PrimitiveValue::from(value)
}

#[cfg(test)]
mod tests {
    use dicom_object::OpenFileOptions;

    use super::*;

    #[test]
    fn writes_a_part10_file_that_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ct.dcm");
        let ct = CtInstance {
            study_uid: "1.2.3",
            series_uid: "1.2.3.4",
            sop_uid: "1.2.3.4.5",
            instance_number: None,
            patient_name: PATIENT_NAME,
        };
        write_ct_instance(&path, &ct).expect("write");

        let bytes = std::fs::read(&path).expect("read bytes");
        assert_eq!(&bytes[128..132], b"DICM", "preamble and magic code");
        let file = OpenFileOptions::new().open_file(&path).expect("open");
        assert_eq!(
            file.meta().transfer_syntax(),
            uids::EXPLICIT_VR_LITTLE_ENDIAN
        );
        assert_eq!(file.meta().media_storage_sop_instance_uid(), "1.2.3.4.5");
        let text = |tag| {
            file.get(tag)
                .and_then(|e| e.value().primitive())
                .map(|v| v.to_str().into_owned())
        };
        assert_eq!(text(tags::PATIENT_NAME).as_deref(), Some(PATIENT_NAME));
        assert_eq!(text(tags::RESCALE_INTERCEPT).as_deref(), Some(" -1024"));
        assert_eq!(text(tags::STUDY_INSTANCE_UID).as_deref(), Some("1.2.3"));
        assert!(file.get(tags::INSTANCE_NUMBER).is_none());
        let pixels = file
            .get(tags::PIXEL_DATA)
            .and_then(|e| e.value().primitive())
            .map(PrimitiveValue::calculate_byte_len);
        let size = usize::from(IMAGE_SIZE);
        assert_eq!(pixels, Some(size * size * 2));
        let long = file
            .get(PRIVATE_LONG_OB_TAG)
            .and_then(|e| e.value().primitive())
            .map(PrimitiveValue::calculate_byte_len);
        assert_eq!(long, Some(PRIVATE_LONG_OB_LEN));
    }
}
