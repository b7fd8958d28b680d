use crate::support::{Feather, ScratchBase};
