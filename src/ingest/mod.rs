//! The stream side: reading entries (new and reclaimed), parsing and validating them into
//! events, coalescing them by study in a window, and the stream commands that acknowledge
//! or dead-letter them.

pub mod bounded;
pub mod entry;
pub mod event;
pub mod pace;
pub mod reader;
pub mod stream;
pub mod window;
