// Package ottlprofile: stand-in for the OTTL profile context.
package ottlprofile

import (
	"errors"
	"fmt"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pprofile"

	"github.com/open-telemetry/opentelemetry-collector-contrib/pkg/ottl"
)

// ContextName is the name of the profile context.
const ContextName = "profile"

var errUnsupported = errors.New("OTTL profile paths are not available in this collector build " +
	"(built by mlobs without the experimental xprofile module)")

type TransformContext struct {
	resourceProfiles pprofile.ResourceProfiles
	scopeProfiles    pprofile.ScopeProfiles
	profile          pprofile.Profile
	dictionary       pprofile.ProfilesDictionary
	cache            *pcommon.Map
}

type TransformContextOption func(*TransformContext)

func WithCache(cache *pcommon.Map) TransformContextOption {
	return func(tCtx *TransformContext) { tCtx.cache = cache }
}

func NewTransformContext(rp pprofile.ResourceProfiles, sp pprofile.ScopeProfiles, p pprofile.Profile,
	d pprofile.ProfilesDictionary, options ...TransformContextOption,
) *TransformContext {
	tCtx := &TransformContext{resourceProfiles: rp, scopeProfiles: sp, profile: p, dictionary: d}
	for _, opt := range options {
		opt(tCtx)
	}
	return tCtx
}

func (tCtx *TransformContext) Close() {}

func (tCtx *TransformContext) GetProfile() pprofile.Profile { return tCtx.profile }

func (tCtx *TransformContext) GetResource() pcommon.Resource { return tCtx.resourceProfiles.Resource() }

func (tCtx *TransformContext) GetInstrumentationScope() pcommon.InstrumentationScope {
	return tCtx.scopeProfiles.Scope()
}

func (tCtx *TransformContext) GetScopeSchemaURLItem() ottl.SchemaURLItem { return tCtx.scopeProfiles }

func (tCtx *TransformContext) GetResourceSchemaURLItem() ottl.SchemaURLItem {
	return tCtx.resourceProfiles
}

func EnablePathContextNames() ottl.Option[*TransformContext] {
	return ottl.WithPathContextNames[*TransformContext]([]string{ContextName, "scope",
		"instrumentation_scope", "resource"})
}

type ConditionSequenceOption func(*ottl.ConditionSequence[*TransformContext])

func WithConditionSequenceErrorMode(errorMode ottl.ErrorMode) ConditionSequenceOption {
	return func(c *ottl.ConditionSequence[*TransformContext]) {
		ottl.WithConditionSequenceErrorMode[*TransformContext](errorMode)(c)
	}
}

func NewConditionSequence(conditions []*ottl.Condition[*TransformContext],
	telemetrySettings component.TelemetrySettings, options ...ConditionSequenceOption,
) ottl.ConditionSequence[*TransformContext] {
	c := ottl.NewConditionSequence(conditions, telemetrySettings)
	for _, op := range options {
		op(&c)
	}
	return c
}

type StatementSequenceOption func(*ottl.StatementSequence[*TransformContext])

func WithStatementSequenceErrorMode(errorMode ottl.ErrorMode) StatementSequenceOption {
	return func(s *ottl.StatementSequence[*TransformContext]) {
		ottl.WithStatementSequenceErrorMode[*TransformContext](errorMode)(s)
	}
}

func NewStatementSequence(statements []*ottl.Statement[*TransformContext],
	telemetrySettings component.TelemetrySettings, options ...StatementSequenceOption,
) ottl.StatementSequence[*TransformContext] {
	s := ottl.NewStatementSequence(statements, telemetrySettings)
	for _, op := range options {
		op(&s)
	}
	return s
}

func NewParser(functions map[string]ottl.Factory[*TransformContext],
	telemetrySettings component.TelemetrySettings, options ...ottl.Option[*TransformContext],
) (ottl.Parser[*TransformContext], error) {
	pathParser := func(path ottl.Path[*TransformContext]) (ottl.GetSetter[*TransformContext], error) {
		return nil, fmt.Errorf("path %q: %w", path.String(), errUnsupported)
	}
	enumParser := func(*ottl.EnumSymbol) (*ottl.Enum, error) { return nil, errUnsupported }
	opts := []ottl.Option[*TransformContext]{ottl.WithEnumParser[*TransformContext](enumParser)}
	opts = append(opts, options...)
	return ottl.NewParser[*TransformContext](functions, pathParser, telemetrySettings, opts...)
}
