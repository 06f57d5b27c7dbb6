//! Small building blocks any folder may use; they import nothing of the
//! crate, so they sit below every other folder.

pub(crate) mod ids;
pub(crate) mod memory;
pub(crate) mod sync;
