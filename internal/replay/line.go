package replay

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"unicode/utf8"
)

// writeLine writes v as one JSON line followed by the stored body under
// "event". v must marshal to a non-empty JSON object.
//
// The body is embedded byte for byte when that keeps the line one valid
// JSON line: it is valid JSON and UTF-8 and has no line breaks (which can
// only be whitespace between tokens). Otherwise "event" is its compacted
// form, when it is JSON at all, and "body_base64" holds the exact bytes,
// so nothing is lost either way.
func writeLine(w io.Writer, v any, body []byte) error {
	head, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode line: %w", err)
	}
	if len(head) < 2 || head[0] != '{' || head[len(head)-1] != '}' {
		return fmt.Errorf("encode line: %T is not a JSON object", v)
	}
	var b bytes.Buffer
	b.Grow(len(head) + len(body) + 32)
	b.Write(head[:len(head)-1])
	isJSON := json.Valid(body)
	switch {
	case isJSON && utf8.Valid(body) && !bytes.ContainsAny(body, "\r\n"):
		b.WriteString(`,"event":`)
		b.Write(body)
	default:
		if isJSON {
			b.WriteString(`,"event":`)
			if err := json.Compact(&b, body); err != nil {
				return fmt.Errorf("encode event: %w", err)
			}
		}
		b.WriteString(`,"body_base64":"`)
		b.WriteString(base64.StdEncoding.EncodeToString(body))
		b.WriteByte('"')
	}
	b.WriteString("}\n")
	_, err = w.Write(b.Bytes())
	return err
}

// writeJSON writes v as one JSON line.
func writeJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode line: %w", err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
