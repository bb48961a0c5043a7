@extends('layout')

@section('title', $tenant->name)

@section('content')
<h1>{{ $tenant->name }}</h1>
{{-- Was: <div @if($pack?->isGenerating()) wire:poll.10s @endif> --}}
<section id="review-pack" data-tenant-id="{{ $tenant->id }}"
         data-pack-id="{{ $pack->id ?? '' }}" data-status="{{ $pack->status ?? 'none' }}">
    <h2>Review pack</h2>
    <p class="status">{{ $pack->status ?? 'No review pack yet' }}</p>
    <button type="button" id="generate-pack">Generate review pack</button>
</section>
@endsection

@push('scripts')
<script>
(() => {
    const card = document.getElementById('review-pack');
    const render = (state) => {
        card.dataset.packId = state.pack ? state.pack.id : '';
        card.dataset.status = state.pack ? state.pack.status : 'none';
        card.querySelector('.status').textContent = state.pack ? state.pack.status : 'No review pack yet';
    };
    let watch = null;
    // Follows the tenant's latest pack until it is terminal (ready, failed, …); a newer pack
    // created meanwhile replaces it in the stream.
    const follow = () => {
        if (watch) watch.close();
        watch = window.runwire.watchReviewPack(@json($tenant->id), { onState: render });
    };
    follow();
    document.getElementById('generate-pack').addEventListener('click', async () => {
        const r = await fetch(@json('/tenants/'.$tenant->id.'/review-packs'), {
            method: 'POST',
            headers: {'X-CSRF-TOKEN': @json(csrf_token()), 'Accept': 'application/json'},
        });
        if (r.ok) follow(); // the new pack is now the latest: follow it
    });
})();
</script>
@endpush
