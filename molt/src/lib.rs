//! molt CLI library
