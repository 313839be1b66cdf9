package bitgosim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/rs/zerolog"
	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/httpretry"
	"github.com/paystream/paystream/internal/sandbox/bitgosim"
)

const (
	enterpriseID = "0123456789abcdef0123456789abcdef"
	connectionID = "11111111-2222-4333-8444-555555555555"
	accessToken  = "v2xsim-token"
)

type fixture struct {
	sim    *bitgosim.Sim
	srv    *httptest.Server
	key    *secp256k1.PrivateKey
	client *bitgo.Client
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureWith(t, bitgosim.Config{})
}

// newFixtureWith is newFixture with cfg's switches; the enterprise, token,
// key and logger are the fixture's.
func newFixtureWith(t *testing.T, cfg bitgosim.Config) *fixture {
	t.Helper()
	key, err := secp256k1.GeneratePrivateKey()
	require.NoError(t, err)
	cfg.EnterpriseID, cfg.AccessToken, cfg.SigningPub, cfg.Logger = enterpriseID, accessToken, key.PubKey(), zerolog.Nop()
	sim := bitgosim.New(cfg)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	c, err := bitgo.New(bitgo.Config{
		BaseURL:      srv.URL,
		EnterpriseID: enterpriseID,
		AccessToken:  accessToken,
		SigningKey:   key,
		Currencies:   bitgo.DefaultCurrencies(),
		Config:       httpretry.Config{HTTP: srv.Client(), MaxAttempts: 1},
	})
	require.NoError(t, err)
	return &fixture{sim: sim, srv: srv, key: key, client: c}
}

func (f *fixture) prepare(t *testing.T, externalID, amount, notes string) bitgo.Request {
	t.Helper()
	r, err := f.client.Prepare(connectionID, externalID, "ETH_USDT", decimal.RequireFromString(amount), notes)
	require.NoError(t, err)
	return r
}

// do sends a raw request and returns the status and decoded JSON body.
func (f *fixture) do(t *testing.T, method, path, token string, body []byte) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, f.srv.URL+path, bytes.NewReader(body))
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var out map[string]any
	_ = json.Unmarshal(data, &out)
	return resp.StatusCode, out
}

func allocPath(eid, cid string) string {
	return "/api/network/v1/enterprises/" + eid + "/clients/connections/" + cid + "/allocations"
}

// rewrite decodes a prepared body, applies edit, and encodes it again.
func rewrite(t *testing.T, body []byte, edit func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(body, &m))
	edit(m)
	b, err := json.Marshal(m)
	require.NoError(t, err)
	return b
}

func TestRejections(t *testing.T) {
	f := newFixture(t)
	good := f.prepare(t, "pay-1", "1", "note").Body
	other, err := secp256k1.GeneratePrivateKey()
	require.NoError(t, err)

	cases := []struct {
		name   string
		token  string
		path   string
		body   []byte
		status int
		errMsg string
	}{
		{"no token", "", allocPath(enterpriseID, connectionID), good, 401, bitgosim.MsgUnauthorized},
		{"wrong token", "nope", allocPath(enterpriseID, connectionID), good, 401, bitgosim.MsgUnauthorized},
		{"other enterprise", accessToken, allocPath("ffffffffffffffffffffffffffffffff", connectionID), good, 404, "Enterprise not found"},
		{"unknown path", accessToken, "/api/network/v1/enterprises/" + enterpriseID + "/nothing", nil, 404, "Not found"},
		{"malformed", accessToken, allocPath(enterpriseID, connectionID), []byte(`{"amount":`), 400, "Malformed request body"},
		{"unknown field", accessToken, allocPath(enterpriseID, connectionID), rewrite(t, good, func(m map[string]any) { m["connectionId"] = connectionID }), 400, "Malformed request body"},
		{"missing nonce", accessToken, allocPath(enterpriseID, connectionID), rewrite(t, good, func(m map[string]any) { delete(m, "nonce") }), 400, "nonce is required"},
		{"empty notes", accessToken, allocPath(enterpriseID, connectionID), rewrite(t, good, func(m map[string]any) { m["notes"] = "" }), 400, "notes must not be empty"},
		{"bad quantity", accessToken, allocPath(enterpriseID, connectionID), rewrite(t, good, func(m map[string]any) {
			m["amount"] = map[string]any{"currency": "ofcusdt", "quantity": "1.5"}
		}), 400, "amount.quantity must be a positive integer string"},
		{"amount differs from payload", accessToken, allocPath(enterpriseID, connectionID), rewrite(t, good, func(m map[string]any) {
			m["amount"] = map[string]any{"currency": "ofcusdt", "quantity": "2000000"}
		}), 400, bitgosim.MsgPayloadMismatch},
		{"notes differ", accessToken, allocPath(enterpriseID, connectionID), rewrite(t, good, func(m map[string]any) { m["notes"] = "other" }), 400, bitgosim.MsgPayloadMismatch},
		{"notes missing", accessToken, allocPath(enterpriseID, connectionID), rewrite(t, good, func(m map[string]any) { delete(m, "notes") }), 400, bitgosim.MsgPayloadMismatch},
		{"nonce differs", accessToken, allocPath(enterpriseID, connectionID), rewrite(t, good, func(m map[string]any) { m["nonce"] = "ab" }), 400, bitgosim.MsgPayloadMismatch},
		{"other connection in path", accessToken, allocPath(enterpriseID, "99999999-2222-4333-8444-555555555555"), good, 400, bitgosim.MsgPayloadMismatch},
		{"payload not an object", accessToken, allocPath(enterpriseID, connectionID), rewrite(t, good, func(m map[string]any) { m["payload"] = "[1]" }), 400, bitgosim.MsgPayloadMismatch},
		{"payload null", accessToken, allocPath(enterpriseID, connectionID), rewrite(t, good, func(m map[string]any) { m["payload"] = "null" }), 400, bitgosim.MsgPayloadMismatch},
		{"payload extra key", accessToken, allocPath(enterpriseID, connectionID), rewrite(t, good, func(m map[string]any) {
			var p map[string]any
			require.NoError(t, json.Unmarshal([]byte(m["payload"].(string)), &p))
			p["extra"] = 1
			b, _ := json.Marshal(p)
			m["payload"] = string(b)
		}), 400, bitgosim.MsgPayloadMismatch},
		{"bad signature", accessToken, allocPath(enterpriseID, connectionID), rewrite(t, good, func(m map[string]any) {
			m["signature"] = bitgo.SignMessage(other, []byte(m["payload"].(string)))
		}), 401, bitgosim.MsgInvalidSignature},
		{"signature not hex", accessToken, allocPath(enterpriseID, connectionID), rewrite(t, good, func(m map[string]any) { m["signature"] = "xyz" }), 401, bitgosim.MsgInvalidSignature},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			method := http.MethodPost
			if tc.body == nil {
				method = http.MethodGet
			}
			status, body := f.do(t, method, tc.path, tc.token, tc.body)
			require.Equal(t, tc.status, status)
			require.Equal(t, tc.errMsg, body["error"])
		})
	}
	require.Empty(t, f.sim.Allocations())
}

func TestPayloadKeyOrderAndEnterpriseID(t *testing.T) {
	f := newFixture(t)
	r := f.prepare(t, "pay-order", "1", "")
	body := rewrite(t, r.Body, func(m map[string]any) {
		// Another key order and an enterpriseId, as older SDKs sent.
		payload := `{"nonce":"` + m["nonce"].(string) + `","enterpriseId":"` + enterpriseID + `","clientExternalId":"pay-order","amount":{"quantity":"1000000","currency":"ofcusdt"},"connectionId":"` + connectionID + `"}`
		m["payload"] = payload
		m["signature"] = bitgo.SignMessage(f.key, []byte(payload))
	})
	status, out := f.do(t, http.MethodPost, allocPath(enterpriseID, connectionID), accessToken, body)
	require.Equal(t, http.StatusOK, status, out)
	require.Len(t, f.sim.Allocations(), 1)
}

func TestIdempotentReplay(t *testing.T) {
	f := newFixture(t)
	r := f.prepare(t, "pay-1", "2.5", "n")
	status1, out1 := f.do(t, http.MethodPost, allocPath(enterpriseID, connectionID), accessToken, r.Body)
	require.Equal(t, http.StatusOK, status1)
	// A second preparation has a new nonce and signature but the same data.
	r2 := f.prepare(t, "pay-1", "2.5", "n")
	require.NotEqual(t, string(r.Body), string(r2.Body))
	for _, body := range [][]byte{r.Body, r2.Body} {
		status, out := f.do(t, http.MethodPost, allocPath(enterpriseID, connectionID), accessToken, body)
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, out1, out)
	}
	all := f.sim.Allocations()
	require.Len(t, all, 1)
	alloc := out1["allocation"].(map[string]any)
	require.Equal(t, all[0].ID, alloc["id"])
	require.Equal(t, "cleared", alloc["status"])
	require.Equal(t, false, alloc["retriable"])
	require.Equal(t, map[string]any{"currency": "ofcusdt", "quantity": "2500000"}, alloc["amount"])
	require.NotEmpty(t, alloc["initiatedBy"])
	_, err := time.Parse(time.RFC3339, alloc["createdAt"].(string))
	require.NoError(t, err)

	// The same clientExternalId for a different allocation is refused.
	r3 := f.prepare(t, "pay-1", "3", "n")
	status, out := f.do(t, http.MethodPost, allocPath(enterpriseID, connectionID), accessToken, r3.Body)
	require.Equal(t, http.StatusBadRequest, status)
	require.Contains(t, out["error"], "already used")
	require.Len(t, f.sim.Allocations(), 1)
}

func TestNonceOnce(t *testing.T) {
	cases := []struct {
		name       string
		cfg        bitgosim.Config
		wantStatus int
		// replayStatus answers a fresh request for a recorded
		// clientExternalId.
		replayStatus int
	}{
		{"400, replay 200", bitgosim.Config{NonceOnce: true}, http.StatusBadRequest, http.StatusOK},
		{"400, replay 409", bitgosim.Config{NonceOnce: true, ReplayConflict: true}, http.StatusBadRequest, http.StatusConflict},
		{"401", bitgosim.Config{NonceOnce: true, NonceReusedStatus: http.StatusUnauthorized}, http.StatusUnauthorized, http.StatusOK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixtureWith(t, tc.cfg)
			path := allocPath(enterpriseID, connectionID)
			r := f.prepare(t, "pay-nonce", "1", "n")
			status, first := f.do(t, http.MethodPost, path, accessToken, r.Body)
			require.Equal(t, http.StatusOK, status)

			// The identical bytes again: refused for the nonce, although
			// they name the recorded allocation.
			status, out := f.do(t, http.MethodPost, path, accessToken, r.Body)
			require.Equal(t, tc.wantStatus, status)
			require.Equal(t, map[string]any{"error": bitgosim.MsgNonceReused, "errorName": bitgosim.ErrNameNonceReused}, out)

			// A fresh nonce for the same clientExternalId gets the
			// simulator's usual replay answer.
			status, out = f.do(t, http.MethodPost, path, accessToken, f.prepare(t, "pay-nonce", "1", "n").Body)
			require.Equal(t, tc.replayStatus, status)
			if status == http.StatusOK {
				require.Equal(t, first, out)
			}
			require.Len(t, f.sim.Allocations(), 1)
			require.Equal(t, 1, f.sim.NoncesRefused())
		})
	}
}

func TestNonceSpentByFaults(t *testing.T) {
	f := newFixtureWith(t, bitgosim.Config{NonceOnce: true})
	path := allocPath(enterpriseID, connectionID)

	// Dropped: no answer, nothing recorded, the nonce spent.
	f.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultDrop})
	dropped := f.prepare(t, "pay-drop", "1", "")
	_, err := f.client.Send(context.Background(), dropped)
	require.Error(t, err)
	var apiErr *bitgo.APIError
	require.False(t, errors.As(err, &apiErr), "a dropped request gets no HTTP answer: %v", err)
	require.Empty(t, f.sim.Allocations())
	status, _ := f.do(t, http.MethodPost, path, accessToken, dropped.Body)
	require.Equal(t, http.StatusBadRequest, status)
	require.Empty(t, f.sim.Allocations())

	// Lost answer: recorded, the nonce spent.
	f.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultLoseResponse})
	lost := f.prepare(t, "pay-lost", "1", "")
	status, _ = f.do(t, http.MethodPost, path, accessToken, lost.Body)
	require.Equal(t, http.StatusBadGateway, status)
	status, _ = f.do(t, http.MethodPost, path, accessToken, lost.Body)
	require.Equal(t, http.StatusBadRequest, status)
	require.Len(t, f.sim.Allocations(), 1)

	// A 500: nothing recorded, the nonce spent.
	f.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultError500})
	failed := f.prepare(t, "pay-500", "1", "")
	status, _ = f.do(t, http.MethodPost, path, accessToken, failed.Body)
	require.Equal(t, http.StatusInternalServerError, status)
	status, _ = f.do(t, http.MethodPost, path, accessToken, failed.Body)
	require.Equal(t, http.StatusBadRequest, status)
	require.Equal(t, 3, f.sim.NoncesRefused())

	// Fresh nonces go through.
	for _, ext := range []string{"pay-drop", "pay-lost", "pay-500"} {
		status, _ = f.do(t, http.MethodPost, path, accessToken, f.prepare(t, ext, "1", "").Body)
		require.Equal(t, http.StatusOK, status, ext)
	}
	require.Len(t, f.sim.Allocations(), 3)
}

func TestFaultDropWithoutNonceOnce(t *testing.T) {
	f := newFixture(t)
	f.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultDrop})
	r := f.prepare(t, "pay-drop", "1", "")
	_, err := f.client.Send(context.Background(), r)
	require.Error(t, err)
	require.Empty(t, f.sim.Allocations())
	a, err := f.client.Send(context.Background(), r)
	require.NoError(t, err, "without NonceOnce the identical replay is accepted")
	require.Equal(t, bitgo.StatusCleared, a.Status)
	require.Zero(t, f.sim.NoncesRefused())
}

func TestFaultSlowStillRecords(t *testing.T) {
	f := newFixture(t)
	f.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultSlow, Delay: time.Millisecond})
	a, err := f.client.Send(context.Background(), f.prepare(t, "pay-slow", "1", ""))
	require.NoError(t, err)
	require.Equal(t, bitgo.StatusCleared, a.Status)
	require.Len(t, f.sim.Allocations(), 1)
}

func TestFaultCountAndOrder(t *testing.T) {
	f := newFixture(t)
	f.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultError500, Count: 2})
	f.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultRelease})
	r := f.prepare(t, "pay-f", "1", "")
	for range 2 {
		status, out := f.do(t, http.MethodPost, allocPath(enterpriseID, connectionID), accessToken, r.Body)
		require.Equal(t, http.StatusInternalServerError, status)
		require.Equal(t, bitgosim.MsgInternal, out["error"])
	}
	require.Empty(t, f.sim.Allocations())
	status, out := f.do(t, http.MethodPost, allocPath(enterpriseID, connectionID), accessToken, r.Body)
	require.Equal(t, http.StatusUnprocessableEntity, status)
	require.Equal(t, "released", out["allocation"].(map[string]any)["status"])
	require.Equal(t, bitgosim.ReasonInsufficientBalance, out["allocation"].(map[string]any)["reason"])
	require.NotEmpty(t, out["error"])
	// Faults are used up; a replay answers the recorded outcome.
	status, _ = f.do(t, http.MethodPost, allocPath(enterpriseID, connectionID), accessToken, r.Body)
	require.Equal(t, http.StatusUnprocessableEntity, status)
	require.Len(t, f.sim.Allocations(), 1)
}

func TestGetAndList(t *testing.T) {
	f := newFixture(t)
	var ids []string
	for _, ext := range []string{"a", "b", "c"} {
		a, err := f.client.Send(context.Background(), f.prepare(t, ext, "1", ""))
		require.NoError(t, err)
		ids = append(ids, a.ID)
	}
	f.sim.InjectFault(bitgosim.Fault{Kind: bitgosim.FaultReserved})
	reserved, err := f.client.Send(context.Background(), f.prepare(t, "d", "1", ""))
	require.NoError(t, err)
	require.Equal(t, bitgo.StatusReserved, reserved.Status)
	require.Equal(t, bitgo.StatusReserved, f.sim.Allocations()[3].Status, "Allocations does not read through")

	base := "/api/network/v1/enterprises/" + enterpriseID + "/clients/allocations"
	status, out := f.do(t, http.MethodGet, base+"/"+ids[1], accessToken, nil)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, ids[1], out["allocation"].(map[string]any)["id"])
	require.Equal(t, "allocation", out["allocation"].(map[string]any)["type"])

	status, out = f.do(t, http.MethodGet, base, accessToken, nil)
	require.Equal(t, http.StatusOK, status)
	list := out["allocations"].([]any)
	require.Len(t, list, 4)
	require.Equal(t, "cleared", list[3].(map[string]any)["status"], "a list read clears the reserved allocation")

	status, out = f.do(t, http.MethodGet, base+"?allocationIds[]="+ids[0]+"&allocationIds[]="+ids[2], accessToken, nil)
	require.Equal(t, http.StatusOK, status)
	require.Len(t, out["allocations"].([]any), 2)

	status, out = f.do(t, http.MethodGet, base+"?pageSize=3&pageNumber=1", accessToken, nil)
	require.Equal(t, http.StatusOK, status)
	require.Len(t, out["allocations"].([]any), 1)

	status, out = f.do(t, http.MethodGet, base+"?statuses[]=released", accessToken, nil)
	require.Equal(t, http.StatusOK, status)
	require.Empty(t, out["allocations"].([]any))

	status, _ = f.do(t, http.MethodGet, base+"?pageSize=-1", accessToken, nil)
	require.Equal(t, http.StatusBadRequest, status)

	status, out = f.do(t, http.MethodGet, base+"/missing", accessToken, nil)
	require.Equal(t, http.StatusNotFound, status)
	require.NotEmpty(t, out["error"])

	status, out = f.do(t, http.MethodDelete, base+"/"+ids[0], accessToken, nil)
	require.Equal(t, http.StatusMethodNotAllowed, status, out)
}

func TestNoSigningPubRejectsAll(t *testing.T) {
	key, err := secp256k1.GeneratePrivateKey()
	require.NoError(t, err)
	srv := httptest.NewServer(bitgosim.New(bitgosim.Config{EnterpriseID: enterpriseID, AccessToken: accessToken, Logger: zerolog.Nop()}))
	t.Cleanup(srv.Close)
	c, err := bitgo.New(bitgo.Config{
		BaseURL: srv.URL, EnterpriseID: enterpriseID, AccessToken: accessToken, SigningKey: key,
		Currencies: bitgo.DefaultCurrencies(), Config: httpretry.Config{HTTP: srv.Client()},
	})
	require.NoError(t, err)
	r, err := c.Prepare(connectionID, "x", "ETH_USDT", decimal.NewFromInt(1), "")
	require.NoError(t, err)
	_, err = c.Send(context.Background(), r)
	var apiErr *bitgo.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusUnauthorized, apiErr.HTTPStatus)
}

func TestEscapedConnectionID(t *testing.T) {
	f := newFixture(t)
	r, err := f.client.Prepare("conn/1", "pay-esc", "ETH_USDT", decimal.NewFromInt(1), "")
	require.NoError(t, err)
	a, err := f.client.Send(context.Background(), r)
	require.NoError(t, err)
	require.Equal(t, "conn/1", a.ConnectionID)
	require.Len(t, f.sim.Allocations(), 1)
}

// TestAllocationsNaming finds the allocations whose notes name an order.
func TestAllocationsNaming(t *testing.T) {
	f := newFixture(t)
	for i, notes := range []string{"settlement O-ours-1", "settlement O-theirs-1", "settlement O-theirs-10", ""} {
		_, err := f.client.Send(context.Background(), f.prepare(t, "ext-"+string(rune('a'+i)), "2", notes))
		require.NoError(t, err)
	}
	got := f.sim.AllocationsNaming("O-theirs-1", "O-theirs-2")
	require.Len(t, got, 1)
	require.Equal(t, "settlement O-theirs-1", got[0].Notes)
	require.Equal(t, "ext-b", got[0].ClientExternalID)
	require.Len(t, f.sim.AllocationsNaming("O-ours-1", "O-theirs-10"), 2)
	require.Empty(t, f.sim.AllocationsNaming())
}
