//! The pgoutput logical decoding format (being written).
