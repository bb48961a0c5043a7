@extends('layout')

@section('title', 'Run #'.$run->id)

@section('content')
<h1>{{ $run->type }} · run #{{ $run->id }}</h1>
{{-- Was: <div @if($run->isActive()) wire:poll.5s @endif> … </div> --}}
<x-runwire::run :run="$run" id="run" />
@endsection
