//! The Part-10 layer (PS3.10 7.1): the preamble and the file meta group up to the transfer
//! syntax, after which the data set is handed on as a token reader.

use std::io::{BufRead, Read};

use dicom_dictionary_std::tags;
use dicom_encoding::text::SpecificCharacterSet;
use dicom_encoding::transfer_syntax::Codec;
use dicom_encoding::{TransferSyntax, TransferSyntaxIndex as _};
use dicom_parser::dataset::LazyDataToken;
use dicom_parser::dataset::lazy_read::LazyDataSetReader;
use dicom_parser::{DynStatefulDecoder, StatefulDecoder};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;

use super::SeriesJsonError;
use super::implicit_un::{HeaderDecoder, UnDepth};
use super::values::trim_padding;
use super::walk::{Reader, check_length, discard};

/// Reads the preamble and the file meta group, and returns a reader of the data set that
/// follows, in its transfer syntax, and how deep that reader is in undefined-length UN
/// elements.
pub(super) fn data_set_reader<R: BufRead>(
    mut source: R,
) -> Result<(Reader<R>, &'static TransferSyntax, UnDepth), SeriesJsonError> {
    skip_preamble(&mut source).map_err(SeriesJsonError::Header)?;
    let ts_uid = read_transfer_syntax(&mut source)?;
    let ts_uid = ts_uid.as_str();
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .filter(|ts| matches!(ts.codec(), Codec::None | Codec::EncapsulatedPixelData(..)))
        .ok_or_else(|| SeriesJsonError::UnsupportedTransferSyntax(ts_uid.to_owned()))?;
    let outer = ts
        .decoder_for::<R>()
        .ok_or_else(|| SeriesJsonError::UnsupportedTransferSyntax(ts_uid.to_owned()))?;
    let depth = UnDepth::default();
    let headers = HeaderDecoder::new(outer, depth.clone());
    // Positions count from here: the decoder only compares them, so no seeking is needed
    // and a pipe reads as well as a file.
    let decoder = StatefulDecoder::new_with_position(
        source,
        headers,
        ts.basic_decoder(),
        SpecificCharacterSet::default(),
        0,
    );
    Ok((LazyDataSetReader::new(decoder), ts, depth))
}

/// Skips the 128-byte preamble unless the stream starts with `DICM` (as dicom-object does).
fn skip_preamble(source: &mut impl BufRead) -> std::io::Result<()> {
    if !source.fill_buf()?.starts_with(b"DICM") {
        source.read_exact(&mut [0; 128])?;
    }
    Ok(())
}

/// Reads the file meta group for its Transfer Syntax UID (0002,0010): `DICM`, then the group
/// length (0002,0000) that PS3.10 7.1 puts first, then the group's elements, parsed by
/// dicom-parser as explicit VR little endian.
fn read_transfer_syntax(source: &mut impl BufRead) -> Result<String, SeriesJsonError> {
    const GROUP_LENGTH: [u8; 8] = [2, 0, 0, 0, b'U', b'L', 4, 0];
    let mut head = [0; 16];
    source
        .read_exact(&mut head)
        .map_err(SeriesJsonError::Header)?;
    if &head[..4] != b"DICM" {
        return Err(SeriesJsonError::Meta("does not start with DICM"));
    }
    if head[4..12] != GROUP_LENGTH {
        return Err(SeriesJsonError::Meta(
            "does not start with its group length",
        ));
    }
    let length = u32::from_le_bytes(head[12..].try_into().expect("4 bytes"));
    // Read whole, so that parsing can stop at the transfer syntax.
    let mut group = Vec::with_capacity(256);
    source
        .take(u64::from(length))
        .read_to_end(&mut group)
        .map_err(SeriesJsonError::Header)?;
    let explicit_le = EXPLICIT_VR_LITTLE_ENDIAN.erased();
    let decoder = DynStatefulDecoder::new_with(&group[..], &explicit_le, Default::default(), 0)
        .map_err(|_| SeriesJsonError::Meta("cannot be decoded"))?;
    let mut reader = LazyDataSetReader::new(decoder);
    let mut uid = Vec::new();
    loop {
        let header = match reader.advance().transpose()? {
            Some(LazyDataToken::ElementHeader(header)) => header,
            Some(_) => return Err(SeriesJsonError::Meta("holds a sequence")),
            None => return Err(SeriesJsonError::Meta("has no Transfer Syntax UID")),
        };
        let Some(value) = reader.advance().transpose()? else {
            return Err(SeriesJsonError::Meta("ends inside an element"));
        };
        if header.tag == tags::TRANSFER_SYNTAX_UID {
            value.read_value_into(&mut uid)?;
            check_length(&header, uid.len() as u64)?;
            break;
        }
        discard(value, Some(header))?;
    }
    let uid = std::str::from_utf8(&uid)
        .map_err(|_| SeriesJsonError::Meta("has a Transfer Syntax UID that is not text"))?;
    Ok(trim_padding(uid).to_owned())
}
