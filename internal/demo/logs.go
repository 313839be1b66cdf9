package demo

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"strings"
)

// logLine is the part of a paystream JSON log line the demo reads.
type logLine struct {
	Level   string `json:"level"`
	Message string `json:"message"`
	Error   string `json:"error"`
	OrderID string `json:"order_id"`
}

// scanLines calls f with every line of the file at path until f returns
// false; a missing file has no lines.
func scanLines(path string, f func(line []byte) bool) {
	file, err := os.Open(path)
	if err != nil {
		return
	}
	defer file.Close()
	scanReader(file, f)
}

func scanReader(r io.Reader, f func(line []byte) bool) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		if !f(sc.Bytes()) {
			return
		}
	}
}

// completedOrderID returns the id of the first order a worker's log at
// path reports completed, or "" when there is none yet.
func completedOrderID(path string) string {
	var id string
	scanLines(path, func(b []byte) bool {
		var l logLine
		if json.Unmarshal(b, &l) == nil && l.Message == "order completed" && l.OrderID != "" {
			id = l.OrderID
			return false
		}
		return true
	})
	return id
}

// lastErrorLine returns the line of a process's log at path that best
// says why it failed, or "" when there is none:
//
//   - a Go runtime panic or fatal error, when there is one (its first
//     line, not the goroutine dump after it);
//   - otherwise the last error: a JSON line at level error, fatal or
//     panic (as "message: error"), or a plain-text line such as the
//     "ingest: listen tcp …: address already in use" a command prints
//     on its way out.
func lastErrorLine(path string) string {
	var panicLine, last string
	scanLines(path, func(b []byte) bool {
		if line, crash := errorLine(b); crash && panicLine == "" {
			panicLine = line
		} else if line != "" && !crash {
			last = line
		}
		return true
	})
	if panicLine != "" {
		return panicLine
	}
	return last
}

// errorLine classifies one log line: the text to report when it is an
// error line (crash true for a runtime panic or fatal error), or "".
func errorLine(b []byte) (line string, crash bool) {
	text := strings.TrimRight(string(b), "\r")
	trimmed := strings.TrimSpace(text)
	if trimmed == "" {
		return "", false
	}
	if trimmed[0] == '{' {
		var l logLine
		if json.Unmarshal([]byte(trimmed), &l) != nil {
			return "", false
		}
		switch l.Level {
		case "error", "fatal", "panic":
		default:
			return "", false
		}
		switch {
		case l.Message != "" && l.Error != "":
			return l.Message + ": " + l.Error, false
		case l.Error != "":
			return l.Error, false
		default:
			return l.Message, false
		}
	}
	if strings.HasPrefix(trimmed, "panic: ") || strings.HasPrefix(trimmed, "fatal error: ") {
		return trimmed, true
	}
	// Lines of a goroutine dump or of flag usage are indented, or name a
	// goroutine; they explain nothing on their own.
	if text[0] == ' ' || text[0] == '\t' || strings.HasPrefix(trimmed, "goroutine ") || strings.HasPrefix(trimmed, "Usage of ") {
		return "", false
	}
	return trimmed, false
}
