package wire

import (
	"errors"
	"fmt"
)

// MaxRunIDLen bounds a run id (a uuid v7 is 36 characters).
const MaxRunIDLen = 64

// ValidateRunID checks a run id: 1 to 64 letters, digits, '-' or '_' (what the
// producer generates, a uuid v7, and what users may pass). It excludes '.', '*', '>' and
// whitespace, so a run id is always exactly one subject token.
func ValidateRunID(id string) error {
	switch {
	case id == "":
		return errors.New("run id: empty")
	case len(id) > MaxRunIDLen:
		return fmt.Errorf("run id: %d characters exceed the maximum of %d", len(id), MaxRunIDLen)
	case !ValidToken(id):
		return fmt.Errorf("run id %q: only letters, digits, '-' and '_' are allowed", id)
	}
	return nil
}
