package kicker

// ManyChunk is manyChunk, for the tests of KiqMany's chunks.
const ManyChunk = manyChunk
