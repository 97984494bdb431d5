//! mythosd library.
