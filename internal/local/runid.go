package local

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
)

// runIDPrefix starts every default run id.
const runIDPrefix = "local-"

// DefaultRunID is the run id of a local run without --run: "local-" and the first 20
// hex digits of SHA-256 over the pipeline's hash (config.Pipeline.Hash: what
// determines the output rows, not the retry budgets or the prices) and the input
// file's bytes. The same command on the same files gets the same id, so a rerun
// resumes; another config or input is another run.
func DefaultRunID(pipelineHash, inputPath string) (string, error) {
	in, err := inputDigest(inputPath)
	if err != nil {
		return "", err
	}
	return runID(pipelineHash, in), nil
}

func runID(pipelineHash, inputDigest string) string {
	h := sha256.New()
	fmt.Fprintf(h, "multiquery local run\nconfig %s\ninput %s\n", pipelineHash, inputDigest)
	return runIDPrefix + hex.EncodeToString(h.Sum(nil))[:20]
}

// inputDigest is the hex SHA-256 of the input file's bytes.
func inputDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("input: %w", err)
	}
	defer f.Close()
	in := sha256.New()
	if _, err := io.Copy(in, f); err != nil {
		return "", fmt.Errorf("input %s: %w", path, err)
	}
	return hex.EncodeToString(in.Sum(nil)), nil
}
