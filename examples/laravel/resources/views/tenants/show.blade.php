@extends('layout')

@section('title', $tenant->name)

@section('content')
<h1>{{ $tenant->name }}</h1>
<section>
    <h2>Review pack</h2>
    {{-- Was: <div @if($pack?->isGenerating()) wire:poll.10s @endif> … </div> --}}
    <x-runwire::review-pack :tenant="$tenant" :pack="$pack" id="review-pack" />
    <button type="button" id="generate-pack">Generate review pack</button>
</section>
@endsection

@push('scripts')
<script>
document.getElementById('generate-pack').addEventListener('click', async () => {
    const r = await fetch(@json('/tenants/'.$tenant->id.'/review-packs'), {
        method: 'POST',
        headers: {'X-CSRF-TOKEN': @json(csrf_token()), 'Accept': 'application/json'},
    });
    // The new pack is the tenant's latest now: the card follows it.
    if (r.ok) document.getElementById('review-pack').dispatchEvent(new CustomEvent('runwire:follow'));
});
</script>
@endpush
