@extends('layout')

@section('title', $title)

@section('content')
<h1>{{ $title }}</h1>
{!! $component !!}
@endsection

@push('scripts')
{{-- A host's bundle: laravel-echo with runwire as its broadcaster, on the page's client. --}}
<script src="/js/laravel-echo.js"></script>
<script>
window.Echo = new Echo.default({ broadcaster: runwire.RunwireConnector, client: runwire.Runwire.page() });
</script>
<script src="/js/livewire-stand-in.js" data-csrf="{{ csrf_token() }}"></script>
@endpush
