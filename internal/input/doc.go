// Package input owns reading the rows of an input table: streaming readers for
// CSV (RFC 4180, with a header record) and JSONL (one JSON object per line).
//
// Readers never drop a record silently. A record that cannot be parsed is
// returned as a malformed [Row] (Err set to a [*RecordError] carrying its
// 1-based line number, Raw holding its text) and reading continues with the
// next record. Only a broken CSV header or a failing underlying stream stops
// reading.
//
// Both readers stream: memory use is bounded by the largest record, and a
// record (CSV) or line (JSONL) longer than 16 MiB is itself reported as
// malformed rather than buffered. Raw text is capped at 64 KiB.
package input
