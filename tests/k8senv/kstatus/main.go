// kstatus-check reads Kubernetes objects as JSON (one object, a list, or a {"items": [...]} list)
// on stdin and prints, per object, the status that the kstatus library
// (sigs.k8s.io/cli-utils/pkg/kstatus/status, what Flux and kubectl-style tools use) computes:
//
//	{"name": "...", "generation": N, "status": "Current|InProgress|Failed|...", "message": "..."}
//
// tierguard's tests run it on CascadePolicy objects the operator wrote on a real API server.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Name       string `json:"name"`
	Generation int64  `json:"generation"`
	Status     string `json:"status"`
	Message    string `json:"message"`
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	var raw any
	if err := utiljson.Unmarshal(data, &raw); err != nil { // numbers as int64, as the API machinery expects
		fail(err)
	}
	var objs []map[string]any
	switch v := raw.(type) {
	case []any:
		for _, o := range v {
			objs = append(objs, o.(map[string]any))
		}
	case map[string]any:
		if items, ok := v["items"].([]any); ok {
			for _, o := range items {
				objs = append(objs, o.(map[string]any))
			}
		} else {
			objs = append(objs, v)
		}
	default:
		fail(fmt.Errorf("expected an object or a list of objects"))
	}
	out := []result{}
	for _, o := range objs {
		u := &unstructured.Unstructured{Object: o}
		res, err := status.Compute(u)
		if err != nil {
			fail(fmt.Errorf("%s: %w", u.GetName(), err))
		}
		out = append(out, result{u.GetName(), u.GetGeneration(), res.Status.String(), res.Message})
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus-check:", err)
	os.Exit(1)
}
