package api

import (
	_ "embed"
	"fmt"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"
)

// openapiYAML is the API's OpenAPI 3.0 document, the source of truth for
// routes, schemas and the generated types.
//
//go:embed openapi.yaml
var openapiYAML []byte

// specJSON is the document as JSON for GET /v1/openapi.json, converted once.
var specJSON = sync.OnceValues(func() ([]byte, error) {
	doc, err := openapi3.NewLoader().LoadFromData(openapiYAML)
	if err != nil {
		return nil, fmt.Errorf("loading openapi.yaml: %w", err)
	}
	return doc.MarshalJSON()
})
