//! The framing of CRIU's images, checked before any entry of one is trusted. CRIU writes
//! `inventory.img` with its own magic word alone, and every other image with two:
//! `IMG_COMMON_MAGIC`, then the image's own. An inventory declaring the older
//! `CRTOOLS_IMAGES_V1` makes CRIU read every image with one magic word, so a reader expecting
//! two would judge entries out of frame, not the ones CRIU restores (review fixrestore30 H2):
//! only `CRTOOLS_IMAGES_V1_1` is taken, and each image's words must be the ones its kind has.
//! Values from CRIU's criu/include/magic.h.

use std::path::Path;

/// The first word of every image but the inventory (`CRTOOLS_IMAGES_V1_1`).
const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
pub(crate) const INVENTORY_MAGIC: u32 = 0x5831_3116;
pub(crate) const PSTREE_MAGIC: u32 = 0x5027_3030;
pub(crate) const IDS_MAGIC: u32 = 0x5443_2030;
pub(crate) const MNTS_MAGIC: u32 = 0x5556_3928;
pub(crate) const SK_QUEUES_MAGIC: u32 = 0x5626_4026;
pub(crate) const FILES_MAGIC: u32 = 0x5630_3138;
pub(crate) const REG_FILES_MAGIC: u32 = 0x5036_3636;

/// CRIU's `CRTOOLS_IMAGES_V1_1`: images with both magic words.
const IMAGES_V1_1: u32 = 2;

/// The bytes before an image's first entry: both magic words.
pub(crate) const HEAD: usize = 8;

/// CRIU's `inventory_entry` (images/inventory.proto), the field judged.
#[derive(Clone, PartialEq, prost::Message)]
struct InventoryEntry {
    #[prost(uint32, optional, tag = "1")]
    img_version: Option<u32>,
}

/// Checks an image's first [`HEAD`] bytes: `IMG_COMMON_MAGIC`, then `own`, the magic of the
/// image's kind; the error says which word is wrong.
pub(crate) fn check_magics(head: &[u8], own: u32) -> Result<(), String> {
    let word = |at: usize| {
        head.get(at..at + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    };
    let (Some(common), Some(kind)) = (word(0), word(4)) else {
        return Err("shorter than its two magic words".into());
    };
    if common != IMG_COMMON_MAGIC {
        return Err(format!(
            "its first magic word is {common:#010x}, not CRIU's common {IMG_COMMON_MAGIC:#010x}: \
             not an image of the format this feather reads (CRIU's images v1.1); take the \
             checkpoint again with this host's CRIU"
        ));
    }
    if kind != own {
        return Err(format!(
            "its magic word is {kind:#010x}, not {own:#010x}, which an image of this name has: \
             an image of another kind, or one altered"
        ));
    }
    Ok(())
}

/// Refuses images whose `inventory.img` is missing, malformed, or declares any version but
/// `CRTOOLS_IMAGES_V1_1` (so CRIU reads every image with the two words [`check_magics`]
/// checks), naming the file.
pub(crate) fn require_images_v1_1(images: &Path) -> std::io::Result<()> {
    let path = images.join("inventory.img");
    let invalid = |why: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        )
    };
    let image = crate::archive::read_at_most(&path, 1 << 20)
        .map_err(|e| invalid(e.to_string()))?
        .ok_or_else(|| invalid("larger than 1 MiB, which no inventory is".into()))?;
    let magic = image
        .get(..4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    if magic != Some(INVENTORY_MAGIC) {
        return Err(invalid(format!(
            "no inventory's magic word ({INVENTORY_MAGIC:#010x}) at its start"
        )));
    }
    let version = first_body(&image[4..])
        .and_then(|body| <InventoryEntry as prost::Message>::decode(body).ok())
        .and_then(|entry| entry.img_version);
    match version {
        Some(IMAGES_V1_1) => Ok(()),
        other => Err(invalid(format!(
            "it declares images of version {other:?}, not CRIU's v1.1 ({IMAGES_V1_1}), the only \
             one this feather reads: take the checkpoint again with this host's CRIU"
        ))),
    }
}

/// The first entry's body of `entries` (a little-endian u32 length, then the body), if whole.
pub(crate) fn first_body(entries: &[u8]) -> Option<&[u8]> {
    let size = entries.get(..4)?;
    let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize;
    entries.get(4..4 + size)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use prost::Message;

    /// Both magic words of an image of kind `own`.
    pub(crate) fn head(own: u32) -> Vec<u8> {
        [IMG_COMMON_MAGIC.to_le_bytes(), own.to_le_bytes()].concat()
    }

    /// Writes into `dir` an `inventory.img` declaring `version`.
    pub(crate) fn write_inventory(dir: &Path, version: u32) {
        let body = InventoryEntry {
            img_version: Some(version),
        }
        .encode_to_vec();
        let mut out = INVENTORY_MAGIC.to_le_bytes().to_vec();
        out.extend((body.len() as u32).to_le_bytes());
        out.extend(body);
        std::fs::write(dir.join("inventory.img"), out).unwrap();
    }

    /// An inventory declaring `CRTOOLS_IMAGES_V1` (one magic word per image, which CRIU still
    /// reads), a missing one, or one without its magic is refused naming `inventory.img`.
    #[test]
    fn images_of_any_version_but_v1_1_are_refused() {
        let dir = feather_testkit::ScratchDir::new("image-version");
        let refused = |dir: &Path| require_images_v1_1(dir).unwrap_err().to_string();
        assert!(refused(&dir.0).contains("inventory.img"));
        write_inventory(&dir.0, IMAGES_V1_1);
        assert!(require_images_v1_1(&dir.0).is_ok());
        write_inventory(&dir.0, 1);
        let v1 = refused(&dir.0);
        assert!(
            v1.contains("inventory.img") && v1.contains("version Some(1)"),
            "{v1}"
        );
        let mut bytes = std::fs::read(dir.0.join("inventory.img")).unwrap();
        bytes[0] ^= 1;
        std::fs::write(dir.0.join("inventory.img"), bytes).unwrap();
        assert!(refused(&dir.0).contains("magic word"));
    }

    /// An image whose first word is not the common magic (a V1 image: its own magic first),
    /// or whose second is another kind's, is refused.
    #[test]
    fn both_magic_words_are_checked() {
        assert_eq!(check_magics(&head(MNTS_MAGIC), MNTS_MAGIC), Ok(()));
        let v1 = [MNTS_MAGIC.to_le_bytes(), 0x7au32.to_le_bytes()].concat();
        assert!(check_magics(&v1, MNTS_MAGIC)
            .unwrap_err()
            .contains("first magic word"));
        let other = check_magics(&head(FILES_MAGIC), SK_QUEUES_MAGIC).unwrap_err();
        assert!(other.contains("another kind"), "{other}");
        assert!(check_magics(&[0; 7], MNTS_MAGIC).is_err());
    }
}
